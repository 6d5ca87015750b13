"""memopt.data, memopt.blocks and tasks.data on real components: datasets on local files, a trained BPE,
blocks on disk, a Prefect test server and an MLflow sqlite store."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict

from memopt.blocks import TokenizedData, tokenize_dataset, train_tokenizer
from memopt.data import (
    DEFAULT_DATASET,
    MATH_FIELDS,
    DatasetError,
    check_dataset,
    dataset_identity,
    extract_answer,
    format_example,
    load_text_dataset,
    normalize_answer,
    prompt_for,
    text_field,
)
from memopt.datagen import generate_math_dataset

MATH_ROWS = [
    {"problem": f"What is ${i} + 1$?", "solution": f"${i} + 1 = {i + 1}$. The answer is $\\boxed{{{i + 1}}}$.", "answer": str(i + 1)}
    for i in range(60)
]
TEXT_ROWS = [{"text": f"Line number {i} of a small corpus about optimizers and memory."} for i in range(60)]


# ---- generator and text -----------------------------------------------------------------------------

def test_generator_is_deterministic_and_shaped_like_math500():
    start = time.perf_counter()
    data = generate_math_dataset(seed=3)
    assert time.perf_counter() - start < 2.0
    assert {k: len(v) for k, v in data.items()} == {"train": 4000, "validation": 200, "test": 100}
    assert data["train"].column_names == ["problem", "solution", "answer"]
    again = generate_math_dataset(seed=3)
    assert all(data[s].to_list() == again[s].to_list() for s in data)
    assert generate_math_dataset(seed=4)["train"][:20] != data["train"][:20]
    for row in data["test"]:
        assert row["solution"].endswith(f"The answer is $\\boxed{{{row['answer']}}}$.")
        assert extract_answer(row["solution"]) == row["answer"]
    train_problems = set(data["train"]["problem"])
    assert not train_problems & set(data["test"]["problem"]), "a test problem is also a training problem"


def test_format_example_and_prompt():
    row = MATH_ROWS[0]
    assert format_example(row) == f"Problem: {row['problem']}\nSolution: {row['solution']}"
    assert format_example(row).startswith(prompt_for(row["problem"]))
    assert format_example({"text": "hello", "id": 3}) == "hello"
    assert format_example({"id": 3, "body": "only string"}) == "only string"


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so $\\boxed{42}$.", "42"),
        ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
        ("first $\\boxed{1}$, then $\\boxed{ {2, 3} }$", "{2, 3}"),
        ("no box here", None),
        ("cut off $\\boxed{\\frac{1}{", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_normalize_answer():
    assert normalize_answer(" $5.0$ ") == normalize_answer("5") == "5"
    assert normalize_answer("\\dfrac{1}{2}") == normalize_answer("\\frac{1} {2}")
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer(None) == ""


def test_text_field():
    assert text_field(Dataset.from_list(MATH_ROWS)) == MATH_FIELDS
    assert text_field(Dataset.from_list([{"id": 1, "text": "a", "title": "b"}])) == "text"
    assert text_field(Dataset.from_list([{"id": 1, "body": "a"}])) == "body"
    assert text_field(Dataset.from_list([{"id": 1, "score": 0.5}])) is None


# ---- loading ---------------------------------------------------------------------------------------

def assert_splits(data: DatasetDict, n_rows: int, with_test: bool) -> None:
    assert list(data) == ["train", "validation", "test"]
    assert sum(len(split) for split in data.values()) == n_rows
    assert len(data["validation"]) > 0
    assert (len(data["test"]) > 0) == with_test


def test_default_dataset_loads():
    data = load_text_dataset(DEFAULT_DATASET, seed=0)
    assert {k: len(v) for k, v in data.items()} == {"train": 4000, "validation": 200, "test": 100}
    check_dataset(DEFAULT_DATASET)


def test_save_to_disk_dataset_dict_only_test_split_like_math500(tmp_path):
    DatasetDict({"test": Dataset.from_list(MATH_ROWS)}).save_to_disk(tmp_path / "math500")
    data = load_text_dataset(str(tmp_path / "math500"), seed=1)
    assert_splits(data, 60, with_test=True)
    assert data["train"]["problem"] == load_text_dataset(str(tmp_path / "math500"), seed=1)["train"]["problem"]
    assert data["train"]["problem"] != load_text_dataset(str(tmp_path / "math500"), seed=2)["train"]["problem"]


def test_save_to_disk_dataset(tmp_path):
    Dataset.from_list(TEXT_ROWS).save_to_disk(tmp_path / "plain")
    assert_splits(load_text_dataset(str(tmp_path / "plain")), 60, with_test=False)


def test_jsonl_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MATH_ROWS))
    assert_splits(load_text_dataset(str(path)), 60, with_test=True)


def test_txt_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(r["text"] + "\n" for r in TEXT_ROWS))
    data = load_text_dataset(str(path))
    assert_splits(data, 60, with_test=False)
    assert text_field(data) == "text"


def test_parquet_and_csv_files(tmp_path):
    Dataset.from_list(TEXT_ROWS).to_parquet(str(tmp_path / "corpus.parquet"))
    Dataset.from_list(MATH_ROWS).to_csv(str(tmp_path / "math.csv"))
    assert_splits(load_text_dataset(str(tmp_path / "corpus.parquet")), 60, with_test=False)
    assert_splits(load_text_dataset(str(tmp_path / "math.csv")), 60, with_test=True)


def test_folder_of_json_files_keeps_named_splits(tmp_path):
    (tmp_path / "data").mkdir()
    for split, rows in (("train", MATH_ROWS[:50]), ("test", MATH_ROWS[50:])):
        (tmp_path / "data" / f"{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_text_dataset(str(tmp_path / "data"))
    assert_splits(data, 60, with_test=True)
    assert data["test"]["problem"] == [r["problem"] for r in MATH_ROWS[50:]]


# ---- errors ----------------------------------------------------------------------------------------

def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_text_dataset(str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset(str(tmp_path / "nowhere"))


def test_no_text_field_lists_columns(tmp_path):
    path = tmp_path / "numbers.jsonl"
    path.write_text("".join(json.dumps({"x": i, "y": 0.5}) + "\n" for i in range(10)))
    with pytest.raises(DatasetError, match=r"no usable text field.*columns found: x, y"):
        load_text_dataset(str(path))


def test_empty_dataset(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "train.txt").write_text("")
    for name in ("empty.jsonl", "folder"):
        with pytest.raises(DatasetError, match="is empty"):
            load_text_dataset(str(tmp_path / name))


def test_unreadable_and_unsupported_files(tmp_path):
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(DatasetError, match="cannot read"):
        load_text_dataset(str(tmp_path / "broken.jsonl"))
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(DatasetError, match="unsupported file type"):
        load_text_dataset(str(tmp_path / "notes.docx"))


def test_hub_name_offline():
    with pytest.raises(DatasetError, match=r"'someone/no-such-dataset'.*hub.*offline"):
        check_dataset("someone/no-such-dataset")


def test_dataset_identity_follows_content(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(MATH_ROWS[0]) + "\n")
    first = dataset_identity(str(path), seed=0)
    assert dataset_identity(str(path), seed=0) == first
    assert dataset_identity(str(path), seed=1) != first
    path.write_text(json.dumps(MATH_ROWS[1]) + "\n" + json.dumps(MATH_ROWS[2]) + "\n")
    assert dataset_identity(str(path), seed=0) != first
    assert dataset_identity(DEFAULT_DATASET, 0) != dataset_identity(DEFAULT_DATASET, 1)
    assert dataset_identity("HuggingFaceH4/MATH-500", 0).startswith("HuggingFaceH4/MATH-500")


# ---- tokenizer and tokenized blocks ---------------------------------------------------------------

def test_train_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    texts = [format_example(r) for r in MATH_ROWS]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    assert len(tokenizer) <= 300
    assert tokenizer.eos_token == tokenizer.pad_token == tokenizer.bos_token == "<|endoftext|>"
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    ids = loaded(texts[0] + " ünïcode")["input_ids"]
    assert ids == tokenizer(texts[0] + " ünïcode")["input_ids"]
    assert loaded.decode(ids) == texts[0] + " ünïcode"
    assert loaded.pad_token_id == loaded.eos_token_id == tokenizer.eos_token_id


@pytest.fixture(scope="module")
def default_tokenized(tmp_path_factory) -> tuple[TokenizedData, float]:
    """The default dataset at the default vocabulary and seq_len 128, and how long it took."""
    start = time.perf_counter()
    data = tokenize_dataset(DEFAULT_DATASET, None, 128, tmp_path_factory.mktemp("tok") / "default")
    return data, time.perf_counter() - start


def test_tokenize_default_dataset(default_tokenized):
    data, seconds = default_tokenized
    assert seconds < 10
    assert sorted(p.name for p in data.root.iterdir()) == ["meta.json", "test.jsonl", "tokenizer", "train.npy", "validation.npy"]
    for split in ("train", "validation"):
        on_disk = np.load(data.root / f"{split}.npy")
        assert on_disk.dtype == np.int32 and on_disk.shape == (data.meta["n_blocks"][split], 128)
        blocks = data.blocks(split)
        assert blocks.dtype == torch.int64 and blocks.shape == on_disk.shape
        assert data.meta["n_tokens"][split] >= blocks.numel()
    assert data.vocab_size == len(data.tokenizer()) <= 4096
    assert int(data.blocks("train").max()) < data.vocab_size
    text = data.tokenizer().decode(data.blocks("train")[0])
    assert text.startswith("Problem: ") and "<|endoftext|>Problem: " in text
    problems = data.eval_problems()
    assert len(problems) == data.meta["n_eval_problems"] == 100
    assert set(problems[0]) == {"problem", "answer"} and len(data.eval_problems(limit=5)) == 5
    assert data.meta["dataset"] == DEFAULT_DATASET and data.meta["seq_len"] == 128


def test_tokenize_reuses_complete_folder(default_tokenized):
    data, _ = default_tokenized
    stamp = (data.root / "train.npy").stat().st_mtime_ns
    start = time.perf_counter()
    again = tokenize_dataset(DEFAULT_DATASET, None, 128, data.root)
    assert time.perf_counter() - start < 0.5
    assert again == data and (data.root / "train.npy").stat().st_mtime_ns == stamp


def test_tokenize_with_local_tokenizer_and_text_only_data(default_tokenized, tmp_path):
    data, _ = default_tokenized
    path = tmp_path / "corpus.txt"
    path.write_text("".join(r["text"] + "\n\n" for r in TEXT_ROWS * 5))  # blank lines are skipped
    out = tokenize_dataset(str(path), str(data.tokenizer_dir), 16, tmp_path / "out")
    assert out.vocab_size == data.vocab_size and out.blocks("train").shape[1] == 16
    assert out.eval_problems() == [] and (out.root / "test.jsonl").read_text() == ""
    eos = out.tokenizer().eos_token_id
    stream = out.blocks("train").flatten()
    assert not ((stream[1:] == eos) & (stream[:-1] == eos)).any(), "a blank line became an example"


def test_unloadable_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="tokenizer .*nowhere.*cannot load"):
        tokenize_dataset(DEFAULT_DATASET, str(tmp_path / "nowhere"), 64, tmp_path / "out")


def test_seq_len_too_large(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MATH_ROWS))
    with pytest.raises(DatasetError, match=r"validation split.*seq_len=512.*smaller seq_len"):
        tokenize_dataset(str(path), None, 512, tmp_path / "out", vocab_size=300)
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == ["rows.jsonl"]


def test_to_mlflow_dataset(default_tokenized):
    data, _ = default_tokenized
    dataset = data.to_mlflow_dataset("validation")
    assert dataset.digest == data.meta["digests"]["validation"]
    assert DEFAULT_DATASET in dataset.name


# ---- the Prefect task -------------------------------------------------------------------------------

def test_tokenize_task_caches_on_content_and_logs_inputs(prefect_server, tracking_uri, tmp_path):
    from mlflow import MlflowClient
    from prefect import flow

    from tasks.data import tokenize

    @flow
    def tokenize_in_flow(**kwargs):
        return tokenize(**kwargs, return_state=True)

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in MATH_ROWS))
    args = dict(dataset=str(path), tokenizer_name=None, seq_len=16, cache_dir=str(tmp_path / "cache"), seed=0)

    first, second = tokenize_in_flow(**args), tokenize_in_flow(**args)
    assert first.name == "Completed" and second.name == "Cached"
    assert second.result() == first.result()
    assert TokenizedData(Path(first.result())).blocks("train").shape[1] == 16

    path.write_text("".join(json.dumps(r) + "\n" for r in MATH_ROWS[:40]))  # an edit: tokenized again
    edited = tokenize_in_flow(**args)
    assert edited.name == "Completed" and edited.result() != first.result()

    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("data-test")).info.run_id
    root = tokenize_in_flow(**args, parent_run_id=run_id, tracking_uri=tracking_uri).result()
    assert root == edited.result()  # a new parent run reuses the folder on disk
    inputs = client.get_run(run_id).inputs.dataset_inputs
    datasets_by_context = {i.tags[0].value: i.dataset for i in inputs}
    assert set(datasets_by_context) == {"training", "validation"}
    assert datasets_by_context["training"].digest == TokenizedData(Path(root)).meta["digests"]["train"]
