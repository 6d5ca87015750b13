"""--system_metrics: MLflow's own system metrics land in the child run, logged by run id (no active run)."""
from __future__ import annotations

from mlflow import MlflowClient

from memopt.config import TrainConfig
from memopt.train import train
from tests.test_train_process import data_dir, make_config  # noqa: F401  (data_dir is a fixture)


def test_system_metrics_in_the_child_run_however_short(data_dir, tmp_path):  # noqa: F811
    """A run far shorter than the interval (12 micro steps, an hour) still records the interval it ended in:
    MLflow's own monitor publishes only whole intervals."""
    cfg = TrainConfig.model_validate({**make_config(tmp_path, data_dir, "adamw", "sysmetrics").model_dump(),
                                      "system_metrics": True, "system_metrics_interval_s": 3600})
    train(cfg)
    client = MlflowClient(cfg.tracking_uri)
    metrics = client.get_run(cfg.run_id).data.metrics
    assert "system/system_memory_usage_megabytes" in metrics
    samples = client.get_metric_history(cfg.run_id, "system/cpu_utilization_percentage")
    assert len(samples) == 1 and samples[0].value >= 0


def test_no_system_metrics_by_default(data_dir, tmp_path):  # noqa: F811
    cfg = make_config(tmp_path, data_dir, "adamw", "plain")
    train(cfg)
    assert not any(k.startswith("system/") for k in MlflowClient(cfg.tracking_uri).get_run(cfg.run_id).data.metrics)
