"""The configuration, declared once (memopt/config.py): every interface derived from it, every parameter under
the one error contract, the Prefect setting memopt needs in force, and the project installed as a package."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from pydantic.fields import FieldInfo

from flows.compare import compare_optimizers, parse_args
from memopt.cli import TABLE_END, TABLE_START, parameter_table
from memopt.config import INT64_MAX, WHY_BOUND, CompareConfig, ConfigError, TrainConfig, TrainingOptions, as_logged_before_regimes

ROOT = Path(__file__).resolve().parents[1]


def parameters() -> dict[str, FieldInfo]:
    """Every parameter of a comparison under the flag a user types."""
    return {**{k: v for k, v in CompareConfig.model_fields.items() if k != "training"}, **TrainingOptions.model_fields}


def test_the_readme_table_is_the_one_generated_from_the_fields():
    text = (ROOT / "README.md").read_text()
    table = text.partition(TABLE_START)[2].partition(TABLE_END)[0].strip()
    assert table == parameter_table(), "README is stale: python -m memopt.cli --readme README.md"
    assert all(f"| `{name}` |" in table for name in parameters())


def test_the_mlproject_declares_no_parameter_list_of_its_own():
    """MLflow passes every undeclared `-P NAME=VALUE` on as `--NAME VALUE`; test_reliability's `mlflow run -P
    batch_size=0` shows one arriving at our check."""
    entry = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["main"]
    assert "parameters" not in entry
    assert entry["command"].strip() == "python -m flows.compare"


def test_every_parameter_has_a_description_in_the_prefect_run_form():
    schema = compare_optimizers.parameters.model_dump(by_alias=True)
    assert list(schema["properties"]) == ["config"], "one parameter; nothing internal"
    definitions = schema["definitions"]
    for model in (CompareConfig, TrainingOptions):
        properties = definitions[model.__name__]["properties"]
        assert set(properties) == set(model.model_fields)
        missing = [name for name, p in properties.items() if not p.get("description")]
        assert not missing, (model.__name__, missing)
    assert definitions["TrainingOptions"]["properties"]["batch_size"]["minimum"] == 1


def _bounds(info: FieldInfo) -> dict[str, float]:
    return {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le", "lt") if getattr(m, k, None) is not None}


def _number_type(info: FieldInfo) -> type | None:
    """int or float for a number parameter (a list of numbers, e.g. --lr_grid, has its own tests)."""
    if typing.get_origin(info.annotation) in (list, dict):
        return None
    text = str(info.annotation)
    return int if "int" in text else float if "float" in text else None


BEYOND = {"ge": -1, "gt": 0, "le": 1, "lt": 0}  # from the bound to a value just past it


@pytest.mark.parametrize("name", [n for n, f in parameters().items() if _bounds(f)])
def test_every_bounded_parameter_out_of_range_is_one_line(name):
    info = parameters()[name]
    kind = _number_type(info)
    what = "an integer" if kind is int else "a number"
    for bound, limit in _bounds(info).items():
        value = limit + BEYOND[bound] if kind is int else limit + (BEYOND[bound] or (-0.5 if bound == "gt" else 0.5))
        text = str(kind(value))
        with pytest.raises(ConfigError) as err:
            parse_args([f"--{name}", text])
        op = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[bound]
        why = f" ({WHY_BOUND[limit]})" if limit in WHY_BOUND else ""
        assert str(err.value) == f"--{name}: got {text}; must be {what} {op} {limit if kind is int else f'{limit:g}'}{why}"


def test_every_integer_parameter_has_an_upper_bound_it_can_be_stored_in():
    """An integer beyond int64 (MLflow's step, torch's sizes) is refused with its reason, not run for 8,000 hours."""
    unbounded = [name for name, info in parameters().items() if _number_type(info) is int and "le" not in _bounds(info)]
    assert not unbounded
    with pytest.raises(ConfigError) as err:
        parse_args(["--max_steps", "99999999999999999999"])
    assert str(err.value) == ("--max_steps: got 99999999999999999999; must be an integer <= 9223372036854775807 "
                              f"({WHY_BOUND[INT64_MAX]})")


@pytest.mark.parametrize("name", [n for n, f in parameters().items() if _number_type(f)])
def test_every_numeric_parameter_given_a_word_is_one_line(name):
    what = "an integer" if _number_type(parameters()[name]) is int else "a number"
    with pytest.raises(ConfigError, match=rf"^--{name}: got 'lots'; must be {what}$"):
        parse_args([f"--{name}", "lots"])


def test_flat_nested_and_command_line_forms_are_one_configuration():
    flat = CompareConfig(methods=["adamw"], batch_size=4, max_steps=3, sweep_steps=2)
    nested = CompareConfig(methods=["adamw"], training={"batch_size": 4, "max_steps": 3}, sweep_steps=2)
    typed = parse_args(["--methods", "adamw", "--batch_size", "4", "--training.max_steps", "3", "--sweep_steps", "2"])
    assert flat == nested == typed
    assert typed.training.batch_size == 4 and typed.training.max_steps == 3


def test_the_reports_command_line_runs_the_same_configuration_again(tmp_path):
    """The report's "reproduce" command: every parameter that differs from its default, as typed."""
    import shlex

    from memopt.cli import command_line

    cfg = parse_args(["--methods", "adamw,galore", "--method_args", "galore.update_proj_gap=50,adamw.betas=(0.9,0.95)",
                      "--tracking_uri", f"sqlite:///{tmp_path}/my store.db", "--system_metrics", "true",
                      "--max_steps", "30", "--register_model_name", "best", "--method_lr_grid", "galore=[0.001,0.01]",
                      "--seeds", "0,1", "--regime", "pretrain"])
    line = command_line(cfg)
    assert line.startswith("python -m flows.compare --methods adamw,galore ") and "--batch_size" not in line
    assert parse_args(shlex.split(line)[3:]) == cfg
    assert command_line(CompareConfig()) == "python -m flows.compare"


def test_the_logged_configuration_reads_back_and_so_does_an_older_flat_one():
    cfg = parse_args(["--methods", "galore,adamw", "--method_args", "galore.betas=(0.9,0.95)", "--lr", "0.003"])
    back = CompareConfig.model_validate_json(cfg.to_json())
    assert back.model_dump(mode="json") == cfg.model_dump(mode="json")  # JSON has lists where Python had tuples
    # what a comparison logged as config_json before the training options were nested, and before regimes,
    # sweeps and seeds: it is resumed as it began, in the pretrain regime without a sweep
    old = {"methods": ["adamw"], "model_name": "llama-micro", "batch_size": 4, "max_steps": 3, "lr": None,
           "warmup_steps": None, "system_metrics": False, "method_args": {}, "rank": None}
    read = CompareConfig.model_validate(as_logged_before_regimes(json.loads(json.dumps(old))))
    assert (read.training.batch_size, read.training.max_steps, read.model_name) == (4, 3, "llama-micro")
    assert (read.regime, read.sweep_steps, read.final_seeds) == ("pretrain", 0, [0])
    assert as_logged_before_regimes(json.loads(cfg.to_json())) == json.loads(cfg.to_json()), "a new one is as logged"


def test_a_training_process_gets_the_comparisons_options_whole(tmp_path):
    cfg = CompareConfig(methods=["adamw"], total_batch_size=16, batch_size=4, warmup_steps=2, max_steps=10, sweep_steps=5)
    process = TrainConfig(method="adamw", model_name="llama-micro", data_dir="d", output_dir="o", run_id="r",
                          tracking_uri="sqlite:///x.db", training=cfg.training)
    process.to_json(tmp_path / "c.json")
    back = TrainConfig.from_json(tmp_path / "c.json")
    assert back == process and back.training == cfg.training
    assert (back.training.accumulation_steps, back.training.global_batch_size) == (4, 16)


def test_an_unknown_key_is_refused_everywhere():
    with pytest.raises(ConfigError, match="unrecognized arguments: --batchsize"):
        parse_args(["--batchsize", "4"])
    with pytest.raises(ValueError, match="batchsize"):
        CompareConfig(batchsize=4)


def _prefect_timeout(code: str, env: dict[str, str]) -> str:
    script = f"{code}; from prefect.settings import get_current_settings as s; print(s().server.ephemeral.startup_timeout_seconds)"
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True).stdout.split()[-1]


def test_the_prefect_startup_timeout_is_in_force_where_the_flow_is_started():
    """`python -m flows.compare` (what `make run` and `mlflow run` run) and `python -m flows.serve` import the
    `flows` package first, before Prefect reads its settings; a value the user set still wins."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    assert _prefect_timeout("import prefect", env) == "20", "Prefect's own default, for contrast"
    for module in ("flows.compare", "flows.serve"):
        assert _prefect_timeout(f"import {module}", env) == "120", module
    assert _prefect_timeout("import flows.compare", {**env, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}) == "300"


def test_memopt_imports_from_any_folder(tmp_path):
    """`make setup` installs the project into its venv (editable): a user's own script can build an optimizer."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import torch; from memopt.optim import build; "
            "print(type(build('galore', torch.nn.Sequential(torch.nn.Linear(8, 8)), rank=2)).__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "GaLoreAdamW"


def test_the_wheel_ships_the_code_and_no_tests(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp_path)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("memopt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"memopt/config.py", "memopt/optim/galore.py", "flows/compare.py", "tasks/train.py"} <= set(names)
    shipped_tests = [n for n in names if n.endswith("_test.py") or "/conftest.py" in n or n.startswith("tests/")]
    assert not shipped_tests, shipped_tests


@pytest.mark.parametrize("argv, message", [
    (["--total_batch_size", "16", "--batch_size", "8"],
     "--methods adalomo: updates inside its backward, one backward per optimizer step; --total_batch_size 16 asks for 2 (use 0)"),
    (["--nproc_per_node", "2"],
     "--methods adalomo: updates inside its backward, before DDP could average the gradients; run it with "
     "nproc_per_node × nnodes = 1"),
    (["--grad_clip", "1.0"],
     "--methods adalomo: leaves no gradients for --grad_clip to clip; use --method_args adalomo.clip_grad_norm=1 "
     "(its own two-pass clipping)"),
])
def test_an_update_inside_backward_is_refused_what_it_cannot_do(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(["--methods", "adamw,adalomo", *argv])
    assert str(err.value) == message
    parse_args(["--methods", "adamw,galore", *argv])  # the same options are fine for the others


@pytest.mark.skipif(torch.cuda.is_available(), reason="paged state is allowed where CUDA is")
def test_a_path_that_needs_cuda_is_refused_before_anything_starts(tmp_path):
    from memopt import preflight

    cfg = parse_args(["--methods", "adamw,adamw-8bit", "--model_name", "llama-micro", "--output_dir", str(tmp_path / "out"),
                      "--tracking_uri", f"sqlite:///{tmp_path}/mlflow.db", "--method_args", "adamw-8bit.paged=True"])
    with pytest.raises(ConfigError, match=r"^--methods adamw-8bit: invalid paged: True; valid: False on a machine "
                                          r"without CUDA \(bitsandbytes' paged optimizers page their state"):
        preflight.check(cfg)
    assert not list(tmp_path.iterdir())  # no store, no output folder
