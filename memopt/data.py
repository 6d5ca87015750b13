"""Datasets and their text: loading any dataset name into train / validation / test, and a row's text.

A dataset name is one of four things:
- an embedded one, generated offline from the seed: `DEFAULT_DATASET`, arithmetic problems
  (memopt/datagen.py), or `DEFAULT_BASE_DATASET`, general English text (memopt/textgen.py);
- a local folder written by `save_to_disk` (a Dataset or a DatasetDict);
- a local json / jsonl / txt / parquet / csv file, or a folder of them;
- a hub name such as `HuggingFaceH4/MATH-500` or `wikitext`, optionally `name:config@revision`.

Every dataset comes back with splits train / validation / test; missing ones are
cut from the data deterministically from the seed. Training text is one string
per row (`format_example`); memopt/blocks.py tokenizes it into blocks on disk.
"""
from __future__ import annotations

import codecs
import contextlib
import hashlib
from pathlib import Path
from typing import Any, Mapping

import datasets
from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset, load_from_disk

from memopt import hub
from memopt.datagen import GENERATOR_VERSION, generate_math_dataset
from memopt.textgen import TEXTGEN_VERSION, generate_general_corpus

DEFAULT_DATASET = "memopt/math-synthetic"
DEFAULT_BASE_DATASET = "memopt/general-synthetic"  # what the fine-tune regime's base model is pretrained on
# The datasets generated in the project, offline: name -> (generator(seed), version for caches).
EMBEDDED = {
    DEFAULT_DATASET: (generate_math_dataset, GENERATOR_VERSION),
    DEFAULT_BASE_DATASET: (generate_general_corpus, TEXTGEN_VERSION),
}
SPLITS = ("train", "validation", "test")
HELD_OUT_FRACTION = 0.05  # of the rows, for each missing validation / test split
MATH_FIELDS = "problem+solution"  # text_field's answer for MATH-style rows
# File suffix -> the `datasets` builder that reads it.
BUILDERS = {".json": "json", ".jsonl": "json", ".txt": "text", ".parquet": "parquet", ".csv": "csv"}
TEXT_SUFFIXES = (".json", ".jsonl", ".txt", ".csv")
TEXT_PROBE_BYTES = 64 * 1024  # how much of a text file is read to tell it from a binary one
# Hub datasets that need a config name; this one is the sensible default.
HUB_DEFAULT_CONFIGS = {"wikitext": "wikitext-2-raw-v1", "Salesforce/wikitext": "wikitext-2-raw-v1"}
# Other spellings of the validation split.
SPLIT_ALIASES = {"valid": "validation", "val": "validation", "dev": "validation"}


class DatasetError(ValueError):
    """A dataset cannot be used; the message names it and says what is wrong."""


# ---- text ---------------------------------------------------------------------------------------

def text_field(dataset: Dataset | DatasetDict | Mapping[str, Any]) -> str | None:
    """Where a row's training text comes from: `MATH_FIELDS` (problem + solution), `text`,
    else the first string column; None if there is none. Takes a dataset or one row."""
    if isinstance(dataset, DatasetDict):
        dataset = next(iter(dataset.values()))
    if isinstance(dataset, Dataset):
        strings = [c for c, f in dataset.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    else:
        strings = [c for c, v in dataset.items() if isinstance(v, str)]
    if "problem" in strings and "solution" in strings:
        return MATH_FIELDS
    if "text" in strings:
        return "text"
    return strings[0] if strings else None


def format_example(row: Mapping[str, Any], field: str | None = None) -> str:
    """The training text of one row (`field`: text_field of its dataset, found from the row if None)."""
    field = field or text_field(row)
    if field == MATH_FIELDS:
        return f"Problem: {row['problem']}\nSolution: {row['solution']}"
    if field is None:
        raise DatasetError(f"row has no text field; columns: {', '.join(row)}")
    return row[field] or ""


def prompt_for(problem: str) -> str:
    """What greedy generation starts from to answer `problem`."""
    return f"Problem: {problem}\nSolution:"


def extract_answer(text: str) -> str | None:
    r"""The content of the last `\boxed{...}` in `text` (braces balanced), stripped; None if none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            if depth == 0:
                return text[begin:i].strip()
            depth -= 1
    return None  # unbalanced: the generation stopped inside the box


def normalize_answer(answer: str | None) -> str:
    """A canonical form for exact-match comparison: no spaces, `$`, `\\left`/`\\right`, final period;
    `\\dfrac` as `\\frac`; numbers as written by Python (`5.0` -> `5`)."""
    if answer is None:
        return ""
    text = answer.strip().strip("$").rstrip(".")
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), (" ", "")):
        text = text.replace(old, new)
    try:
        number = float(text.replace(",", ""))
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else str(number)


# ---- loading --------------------------------------------------------------------------------------

def load_text_dataset(name: str, seed: int = 0) -> DatasetDict:
    """The dataset `name` with splits train, validation and test (test may be empty)."""
    raw = _load_raw(name, seed)
    if sum(len(split) for split in raw.values()) == 0:
        raise DatasetError(f"dataset {name!r} is empty")
    if text_field(raw) is None:
        columns = ", ".join(next(iter(raw.values())).column_names)
        raise DatasetError(f"dataset {name!r} has no usable text field (no string column); columns found: {columns}")
    return _with_splits(raw, seed, name)


def check_dataset(name: str) -> None:
    """Raise DatasetError now if `name` cannot be used, before anything is started; `datasets`' own error
    logs and progress bars stay quiet, the error says it in one line."""
    if name not in EMBEDDED:
        with _quiet_datasets():
            load_text_dataset(name)


@contextlib.contextmanager
def _quiet_datasets():
    verbosity, bars = datasets.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def _load_raw(name: str, seed: int) -> DatasetDict:
    if name in EMBEDDED:
        return EMBEDDED[name][0](seed)
    path = Path(name).expanduser()
    if path.exists():
        return _load_local(name, path)
    if _looks_local(name):
        raise DatasetError(f"dataset {name!r}: path does not exist")
    return _load_hub(name)


def _looks_local(name: str) -> bool:
    """A name that can only be a path (a hub name is `name` or `owner/name`)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix in BUILDERS


def _load_local(name: str, path: Path) -> DatasetDict:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    if all(p.stat().st_size == 0 for p in files):  # `datasets` fails on these with no useful message
        raise DatasetError(f"dataset {name!r} is empty: no file under it has any content")
    for file in files:
        if file.suffix in TEXT_SUFFIXES and not _is_text(file):  # `datasets` says only "error while generating"
            raise DatasetError(f"dataset {name!r}: {file} is not text (its first bytes are binary or not UTF-8); "
                               f"a {file.suffix} file must be UTF-8 text")
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            loaded = load_from_disk(str(path))
        elif path.is_dir():
            loaded = load_dataset(str(path))  # infers the builder and the splits from the file names
        elif path.suffix in BUILDERS:
            loaded = load_dataset(BUILDERS[path.suffix], data_files=str(path))
        else:
            raise DatasetError(f"dataset {name!r}: unsupported file type {path.suffix!r}; supported: {', '.join(BUILDERS)}")
    except DatasetError:
        raise
    except Exception as e:  # datasets raises many types for unreadable files; all mean the same here
        # "An error occurred while generating the dataset" says nothing: the parser's error beneath it does
        cause = e.__cause__ if isinstance(e, datasets.exceptions.DatasetGenerationError) and e.__cause__ else e
        raise DatasetError(f"dataset {name!r}: cannot read it: {cause}") from e
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def _is_text(file: Path) -> bool:
    with file.open("rb") as f:
        head = f.read(TEXT_PROBE_BYTES)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character cut at the end is fine
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def _hub_spec(name: str) -> tuple[str, str | None, str | None]:
    """`name[:config][@revision]` -> (name, config, revision)."""
    name, _, revision = name.partition("@")
    name, _, config = name.partition(":")
    return name, config or HUB_DEFAULT_CONFIGS.get(name), revision or None


def _load_hub(name: str) -> DatasetDict:
    path, config, revision = _hub_spec(name)
    if (why := hub.unreachable_hint()) is not None:
        raise DatasetError(f"dataset {name!r}: not a local path, and the Hugging Face hub is out of reach ({why})")
    try:
        loaded = load_dataset(path, config, revision=revision)
    except Exception as e:  # offline, unknown name, missing config...: the name cannot be used
        offline = f" (offline: {' / '.join(hub.OFFLINE_VARIABLES)} is set)" if hub.offline() else ""
        raise DatasetError(f"dataset {name!r}: not a local path and cannot be loaded from the hub{offline}: {e}") from e
    return loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})


def _with_splits(raw: DatasetDict, seed: int, name: str) -> DatasetDict:
    """train / validation / test; missing validation and (for problems with answers) test are cut
    from train, or from all rows when there is no train split (MATH-500 has only `test`)."""
    splits = {SPLIT_ALIASES.get(k, k): v for k, v in raw.items() if len(v)}
    if "train" not in splits:
        splits = {"train": concatenate_datasets(list(splits.values()))}
    train = splits["train"]
    wanted = ["validation"] + (["test"] if has_answers(train) else [])
    missing = [split for split in wanted if split not in splits]
    n_held_out = max(1, round(HELD_OUT_FRACTION * len(train)))
    if len(train) <= n_held_out * len(missing):
        raise DatasetError(f"dataset {name!r}: {len(train)} rows are too few to cut {', '.join(missing)} from")
    for split in missing:
        cut = train.train_test_split(test_size=n_held_out, seed=seed)
        train, splits[split] = cut["train"], cut["test"]
    splits["train"] = train
    splits.setdefault("test", train.select([]))
    return DatasetDict({split: splits[split] for split in SPLITS})


def has_answers(dataset: Dataset) -> bool:
    """Whether the rows are problems with answers (a `problem` column and an `answer` or `solution` one)."""
    return "problem" in dataset.column_names and bool({"answer", "solution"} & set(dataset.column_names))


def dataset_identity(dataset: str, seed: int) -> str:
    """A stable string naming the data `load_text_dataset(dataset, seed)` returns, for caches:
    a local path with a fingerprint of its files (an edit changes it), a hub name with its
    revision, the default with its generator version."""
    if dataset in EMBEDDED:
        return f"{dataset} generator={EMBEDDED[dataset][1]} seed={seed}"
    path = Path(dataset).expanduser()
    if path.exists():
        return f"{path.resolve()} files={path_fingerprint(path)} seed={seed}"
    return f"{dataset} seed={seed}"


def path_fingerprint(path: Path) -> str:
    """Hash of the relative names, sizes and modification times of the files under `path`."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
