"""The Prefect flows. Importing this package sets the Prefect settings memopt needs before Prefect reads its
settings, which it does once, at import: every entry point (`python -m flows.compare`, `mlflow run`,
`make run`, `python -m flows.serve`) imports this package first. A value the user sets wins."""
import os

# The temporary API server that a flow started without PREFECT_API_URL waits for: Prefect's 20 s is too
# short on a busy 2-core laptop (seen failing there).
EPHEMERAL_STARTUP_TIMEOUT_S = 120
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_TIMEOUT_S))
# The temporary server's telemetry service: without a network it logs an error each time, and on a busy
# sqlite database a 100-line "database is locked" traceback, into the comparison's output.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
