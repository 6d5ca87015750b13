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

# Training processes on a shared CPU: OpenMP's threads otherwise spin while they wait for work, and when
# other processes hold the cores a 2-thread step on 2 cores becomes 4 to 10 times slower (measured on
# llama-9m at load 5: 1.1 s a step spinning, 0.32 s passive); passive waiting costs nothing measurable
# when the cores are free. Inherited by every training process the flow starts; a value the user sets wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
