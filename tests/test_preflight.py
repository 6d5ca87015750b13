"""Everything that can be known before training is refused before training (issue 17): one line `error: ...`,
exit 2, and nothing left behind (no store, no run, no output folder, no token cache).

Each case is `flows.compare.main` on a real store path and output folder in a temporary folder.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.compare import main
from memopt import hub
from memopt.tracking import child_run, open_parent_run

MICRO = ["--model_name", "llama-micro", "--seq_len", "32", "--methods", "adamw", "--regime", "pretrain"]  # the task data, no base model


def refused(tmp: Path, capsys, *args: str) -> str:
    """main(args) on a store and output folder under `tmp`: the one error line, after checking nothing was made."""
    before = sorted(tmp.rglob("*"))
    code = main(["--tracking_uri", f"sqlite:///{tmp}/mlflow.db", "--output_dir", str(tmp / "results"), *args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, err
    assert "Traceback" not in err and "Retrying" not in err, err
    assert sorted(tmp.rglob("*")) == before, "nothing made, nothing changed"
    return errors[0]


class WritesAFileWhenUnpickled:
    """What a malicious pytorch_model.bin holds: loading it with pickle (torch.load(weights_only=False)) runs code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """A complete save_pretrained folder (config, tokenizer, safetensors weights), and two broken copies: without its
    tokenizer, and with its weights as a pytorch_model.bin whose pickle writes a file when loaded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from memopt.blocks import train_tokenizer

    root = tmp_path_factory.mktemp("models")
    whole = root / "whole"
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2,
                         num_hidden_layers=1, vocab_size=300)
    LlamaForCausalLM(config).save_pretrained(whole)
    train_tokenizer(["What is 1 + 1?", "The answer is 2."] * 50, vocab_size=300).save_pretrained(whole)
    no_tokenizer, pickled = root / "no-tokenizer", root / "pickled"
    LlamaForCausalLM(config).save_pretrained(no_tokenizer)
    LlamaForCausalLM(config).save_pretrained(pickled)
    train_tokenizer(["What is 1 + 1?", "The answer is 2."] * 50, vocab_size=300).save_pretrained(pickled)
    (pickled / "model.safetensors").unlink()
    marker = root / "unpickled-and-ran"
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(WritesAFileWhenUnpickled(marker)))
    return {"whole": whole, "no-tokenizer": no_tokenizer, "pickled": pickled, "marker": marker}


# ---- the table of issue 17 --------------------------------------------------------------------------

def test_a_batch_larger_than_the_data_is_refused_before_any_run(tmp_path, capsys):
    error = refused(tmp_path, capsys, *MICRO, "--batch_size", "100000")
    assert error.startswith("error: --batch_size: got 100000; a step's 100000 sequences are more than the ")
    assert "training blocks of 32 tokens in 'memopt/math-synthetic': must be at most " in error


def test_the_finetune_regime_checks_its_base_models_text_before_any_run(tmp_path, capsys):
    # the task data is read with the base model's tokenizer, which only the base model's training makes
    error = refused(tmp_path, capsys, *MICRO[:-2], "--batch_size", "100000")  # the default regime, finetune
    assert error.startswith("error: --batch_size: got 100000; a step's 100000 sequences are more than the ")
    assert "training blocks of 32 tokens in 'memopt/general-synthetic': must be at most " in error


def test_a_total_batch_larger_than_the_data_names_total_batch_size(tmp_path, capsys):
    error = refused(tmp_path, capsys, *MICRO, "--batch_size", "4", "--total_batch_size", "400000")
    assert error.startswith("error: --total_batch_size: got 400000; a step's 400000 sequences are more than the ")


def test_epochs_whose_steps_do_not_fit_in_64_bits_are_refused(tmp_path, capsys):
    error = refused(tmp_path, capsys, *MICRO, "--epochs", "9223372036854775807")
    assert error.startswith("error: --epochs: got 9223372036854775807; 9223372036854775807 epochs of ")
    assert "more than 9223372036854775807 (the largest 64-bit integer" in error


def test_an_integer_beyond_int64_is_refused(tmp_path, capsys):
    error = refused(tmp_path, capsys, "--max_steps", "99999999999999999999")
    assert error.startswith("error: --max_steps: got 99999999999999999999; must be an integer <= 9223372036854775807 (")


@pytest.mark.parametrize("content", [b"just some text, not a database\n", bytes(range(256)) * 8], ids=["text", "bytes"])
def test_a_sqlite_store_that_is_not_a_database_is_refused(tmp_path, capsys, content):
    (tmp_path / "mlflow.db").write_bytes(content)
    error = refused(tmp_path, capsys)
    assert error == f"error: --tracking_uri: sqlite:///{tmp_path}/mlflow.db: {tmp_path}/mlflow.db is not a sqlite " \
                    "database (file is not a database)"
    assert (tmp_path / "mlflow.db").read_bytes() == content


def test_a_sqlite_store_that_is_a_folder_is_refused(tmp_path, capsys):
    (tmp_path / "mlflow.db").mkdir()
    error = refused(tmp_path, capsys)
    assert error.startswith(f"error: --tracking_uri: sqlite:///{tmp_path}/mlflow.db: {tmp_path}/mlflow.db is a folder")


def test_a_sqlite_database_that_is_not_an_mlflow_store_is_left_alone(tmp_path, capsys):
    import sqlite3

    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        con.execute("CREATE TABLE orders (id INTEGER)")
    error = refused(tmp_path, capsys)
    assert error.endswith("is a sqlite database but not an MLflow store (tables orders)")


def test_a_model_folder_without_a_tokenizer_is_refused(tmp_path, capsys, model_folders):
    folder = model_folders["no-tokenizer"]
    error = refused(tmp_path, capsys, "--model_name", str(folder), "--seq_len", "32", "--methods", "adamw")
    assert error.startswith(f"error: --model_name: {folder} has no tokenizer that loads (")
    assert error.endswith(f"tokenizer.save_pretrained('{folder}')")


def test_pickled_weights_are_refused_unloaded_with_how_to_convert_them(tmp_path, capsys, model_folders):
    from memopt.models import build_model

    folder, marker = model_folders["pickled"], model_folders["marker"]
    error = refused(tmp_path, capsys, "--model_name", str(folder), "--seq_len", "32", "--methods", "adamw")
    assert error.startswith(f"error: --model_name: {folder} holds its weights as a pickle (pytorch_model.bin), which "
                            "can run code when loaded; only safetensors are loaded from a folder.")
    assert f"M.from_pretrained('{folder}').save_pretrained('{folder}')" in error
    with pytest.raises(OSError, match="model.safetensors"):  # the training process's own load: safetensors only
        build_model(str(folder))
    assert not marker.exists(), "the pickle was never loaded"


def test_a_whole_model_folder_passes(tmp_path, model_folders):
    from memopt import preflight
    from memopt.config import CompareConfig

    preflight.check(CompareConfig(model_name=str(model_folders["whole"]), seq_len=32, methods=["adamw"],
                                  output_dir=str(tmp_path / "results"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))


def test_every_method_together_passes_the_optimizer_checks(tmp_path):
    """Each optimizer is checked on a model of its own: BlockLLM and BAdam freeze tensors and Low-Rank, LoRO & co.
    replace modules when they build, so a shared model left Muon, listed after them, no parameters to take."""
    from memopt import optim, preflight
    from memopt.config import CompareConfig

    preflight.check(CompareConfig(model_name="llama-micro", seq_len=32, methods=list(optim.METHODS), regime="pretrain",
                                  output_dir=str(tmp_path / "results"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))


# ---- the minor points -------------------------------------------------------------------------------

def test_a_binary_jsonl_is_one_line_without_the_datasets_noise(tmp_path, capsys):
    data = tmp_path / "data" / "rows.jsonl"
    data.parent.mkdir()
    data.write_bytes(bytes(range(256)) * 16)
    error = refused(tmp_path, capsys, "--dataset", str(data))
    assert error == f"error: --dataset: dataset '{data}': {data} is not text (its first bytes are binary or not UTF-8); " \
                    "a .jsonl file must be UTF-8 text"


def test_a_malformed_jsonl_says_what_the_parser_said(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "one"}\n{not json\n')
    before = sorted(tmp_path.rglob("*"))
    assert main(["--dataset", str(data), "--output_dir", str(tmp_path / "results"),
                 "--tracking_uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: --dataset: dataset '{data}': cannot read it: JSON parse error: Missing a name "
                                "for object member. in row 1"], err
    assert sorted(tmp_path.rglob("*")) == before


def test_resume_given_a_child_run_points_at_its_comparison(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the store's artifact folder is made in the working folder
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = open_parent_run(client, None, run_name="compare")
    child = child_run(client, parent, "adamw").info.run_id
    error = refused(tmp_path, capsys, "--resume", child)
    assert error.count("--resume") == 2  # the flag once, and the command that finishes the comparison
    assert error == f"error: --resume: run {child} is the adamw run of comparison {parent}; resume the comparison: " \
                    f"--resume {parent}"


@pytest.mark.parametrize("flag, name", [("--model_name", "distilgpt2"), ("--dataset", "someone/some-data")])
def test_a_hub_name_without_the_hub_is_one_line_at_once(tmp_path, capsys, monkeypatch, flag, name):
    import huggingface_hub.constants

    # Not offline: the hub is asked, at an address nothing listens on (this machine's port 9, discard).
    for variable in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    hub.unreachable.cache_clear()
    try:
        error = refused(tmp_path, capsys, flag, name)
    finally:
        hub.unreachable.cache_clear()
    assert "the Hugging Face hub is out of reach (http://127.0.0.1:9 cannot be reached: " in error
    assert error.endswith("with HF_HUB_OFFLINE=1 a copy in the local Hugging Face cache is used)")
