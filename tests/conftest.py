"""Fixtures shared by the test files: no hub, one Prefect test server per session, MLflow in sqlite."""
import os
import tempfile

# Tests never reach the Hugging Face hub: an attempt fails at once instead of timing out.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# `datasets` caches what it reads from local files; keep that out of the user's cache.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="memopt-test-hf-datasets-"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Test models are tiny: one thread per process (the training subprocesses inherit it) beats
# several threads fighting over the 2 cores; the micro model's evaluation goes from 26 s to 1.4 s.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One Prefect test server (temporary database) for the whole session; cached task results
    go to a temporary folder, not ~/.prefect/storage."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    results = tmp_path_factory.mktemp("prefect-results")
    with prefect_test_harness(server_startup_timeout=120), temporary_settings({PREFECT_LOCAL_STORAGE_PATH: results}):
        yield


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    """A fresh MLflow store: a sqlite file under the test's temporary folder."""
    return f"sqlite:///{tmp_path}/mlflow.db"
