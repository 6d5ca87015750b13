"""--system_metrics: MLflow's own system metrics land in the child run, logged by run id (no active run)."""
from __future__ import annotations

from mlflow import MlflowClient

from memopt.config import TrainConfig
from memopt.train import train
from tests.test_train_process import data_dir, make_config  # noqa: F401  (data_dir is a fixture)


def test_system_metrics_in_the_child_run(data_dir, tmp_path):  # noqa: F811
    cfg = TrainConfig.model_validate({**make_config(tmp_path, data_dir, "adamw", "sysmetrics").model_dump(),
                                      "system_metrics": True, "system_metrics_interval_s": 0.05, "max_steps": 80})
    # MLflow's monitor publishes a sample only after a whole interval: a run shorter than that has none.
    train(cfg)
    metrics = MlflowClient(cfg.tracking_uri).get_run(cfg.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


def test_no_system_metrics_by_default(data_dir, tmp_path):  # noqa: F811
    cfg = make_config(tmp_path, data_dir, "adamw", "plain")
    train(cfg)
    assert not any(k.startswith("system/") for k in MlflowClient(cfg.tracking_uri).get_run(cfg.run_id).data.metrics)
