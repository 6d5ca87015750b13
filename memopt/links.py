"""Addresses in the MLflow UI, for the links that the logs, the run descriptions and the Prefect artifacts carry.

A tracking server is its own UI. A local store (sqlite) has none until someone runs `mlflow ui` on it, which
the README does on http://127.0.0.1:5000: that is where its links point unless `mlflow_ui_url` says otherwise.

MLflow 3's UI opens in its GenAI workspace (traces, no runs table) unless told otherwise; the links ask for
its "Model training" one, where the runs table and the chart view are.
"""
from __future__ import annotations

LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"


def mlflow_ui(tracking_uri: str, mlflow_ui_url: str = "") -> str:
    if mlflow_ui_url:
        return mlflow_ui_url.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return LOCAL_MLFLOW_UI


MODEL_TRAINING = "?workflowType=machine_learning"


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}{MODEL_TRAINING}"


def experiment_url(ui: str, experiment_id: str) -> str:
    return f"{ui}/#/experiments/{experiment_id}/runs{MODEL_TRAINING}"
