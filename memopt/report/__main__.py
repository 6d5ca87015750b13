"""Rebuild a comparison's report from the MLflow store alone:

    python -m memopt.report PARENT_RUN_ID --tracking_uri sqlite:///mlflow.db --output_dir results/report
"""
from __future__ import annotations

import argparse
from pathlib import Path

from memopt.config import DEFAULT_TRACKING_URI
from memopt.report import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m memopt.report", description=__doc__.split("\n")[1])
    parser.add_argument("parent_run_id")
    parser.add_argument("--tracking_uri", default=DEFAULT_TRACKING_URI)
    parser.add_argument("--output_dir", default="results/report")
    args = parser.parse_args(argv)
    report = write_report(args.tracking_uri, args.parent_run_id, Path(args.output_dir))
    print("\n".join(str(path) for path in report.files[:2]))


if __name__ == "__main__":
    main()
