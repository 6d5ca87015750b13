"""Tokenizers and tokenized blocks on disk: a dataset's text packed into blocks of `seq_len` tokens.

`tokenize_dataset` tokenizes the rows of a dataset (memopt/data.py), each followed by EOS,
packs them into blocks and writes them to disk once, with the tokenizer and the held-out
problems; `TokenizedData` reads such a folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from memopt.data import (DatasetError, dataset_identity, extract_answer, format_example, has_answers, load_text_dataset,
                         path_fingerprint, text_field)

DEFAULT_VOCAB_SIZE = 4096
EOS_TOKEN = "<|endoftext|>"


# ---- tokenizers -----------------------------------------------------------------------------------

def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` (GPT-2 style: any text encodes, no unknown tokens), with
    `EOS_TOKEN` as its only special token, serving as bos, eos, pad and unk."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, unk_token=EOS_TOKEN
    )


def load_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A hub name or local tokenizer folder, with a pad token (EOS where it had none)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as e:  # what transformers raises for a missing folder or an unreachable hub name
        raise ValueError(f"tokenizer {name!r}: cannot load it: {e}") from e
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {name!r} has no EOS token to separate examples with")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ---- tokenized blocks on disk ---------------------------------------------------------------------

@dataclass(frozen=True)
class TokenizedData:
    """A folder written by `tokenize_dataset`: train.npy and validation.npy (int32 [n_blocks, seq_len]),
    tokenizer/, test.jsonl (problems with answers, maybe none), meta.json (written last)."""

    root: Path

    def blocks(self, split: str) -> torch.Tensor:
        """The blocks of `split` ("train" or "validation") as int64 [n_blocks, seq_len]."""
        if split not in ("train", "validation"):
            raise ValueError(f"no tokenized split {split!r}; tokenized splits: train, validation")
        return torch.from_numpy(np.load(self.root / f"{split}.npy", mmap_mode="r").astype(np.int64))

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    def tokenizer(self) -> PreTrainedTokenizerFast:
        return AutoTokenizer.from_pretrained(str(self.tokenizer_dir))

    @cached_property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.root / "meta.json").read_text())

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def seq_len(self) -> int:
        return int(self.meta["seq_len"])

    def eval_problems(self, limit: int | None = None) -> list[dict[str, str]]:
        """Held-out rows {"problem", "answer"} for answer accuracy (the first `limit`)."""
        lines = (self.root / "test.jsonl").read_text().splitlines()
        return [json.loads(line) for line in itertools.islice(lines, limit)]

    def to_mlflow_dataset(self, split: str = "train"):
        """The blocks of `split` as an `mlflow.data` dataset, digest from meta (no re-hashing)."""
        import mlflow.data  # here, so that the data layer imports without MLflow

        meta = self.meta
        return mlflow.data.from_numpy(
            np.load(self.root / f"{split}.npy", mmap_mode="r"),
            source=str(self.root.resolve()),
            name=f"{meta['dataset']} ({split}, seq_len={meta['seq_len']}, vocab={meta['vocab_size']})",
            digest=meta["digests"][split],
        )


def is_complete(out_dir: Path) -> bool:
    return (Path(out_dir) / "meta.json").is_file()


def tokenized_key(dataset: str, tokenizer_name: str | None, seq_len: int, seed: int) -> str:
    """Everything the tokenized folder depends on besides the code."""
    tokenizer = tokenizer_name or f"bpe-{DEFAULT_VOCAB_SIZE}"
    if tokenizer_name and Path(tokenizer_name).exists():
        tokenizer += f" files={path_fingerprint(Path(tokenizer_name))}"
    return json.dumps([dataset_identity(dataset, seed), tokenizer, seq_len])


def tokenized_dir(cache_dir: str | Path, dataset: str, tokenizer_name: str | None, seq_len: int, seed: int) -> Path:
    """Where the tokens of (dataset, tokenizer, seq_len, seed) live under `cache_dir`."""
    digest = hashlib.sha256(tokenized_key(dataset, tokenizer_name, seq_len, seed).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"tokenized-{digest}"


def tokenize_dataset(
    dataset: str,
    tokenizer_name: str | None,
    seq_len: int,
    out_dir: Path,
    seed: int = 0,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> TokenizedData:
    """Tokenize `dataset` into `out_dir`, or reuse it if it is already complete. `tokenizer_name`
    None trains a byte-level BPE of `vocab_size` on the train split. `check(meta)` sees the block counts
    before the folder is published (or when it is reused): if it raises, no folder is left behind."""
    out_dir = Path(out_dir)
    if is_complete(out_dir):
        if check is not None:
            check(TokenizedData(out_dir).meta)
        return TokenizedData(out_dir)
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    pretrained = load_tokenizer(tokenizer_name) if tokenizer_name else None  # before the data: fail fast
    splits = load_text_dataset(dataset, seed)
    field = text_field(splits)
    texts = {split: _texts(splits[split], field) for split in ("train", "validation")}
    tokenizer = pretrained or train_tokenizer(texts["train"], vocab_size)
    made = [p for p in (out_dir.parent, *out_dir.parent.parents) if not p.exists()]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the published folder is an ordinary one
    try:
        meta = _write_blocks(tmp, texts, tokenizer, seq_len, dataset)
        if check is not None:
            check(meta)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        n_eval_problems = _write_eval_problems(tmp / "test.jsonl", splits["test"])
        meta.update(
            dataset=dataset, identity=dataset_identity(dataset, seed), seed=seed, seq_len=seq_len,
            tokenizer=tokenizer_name or f"bpe-{vocab_size} trained on train split", vocab_size=len(tokenizer),
            n_eval_problems=n_eval_problems,
        )
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # last: its presence marks completion
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # the folders made for it, innermost first, if nothing else has arrived in them
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still here if another writer published first
    return TokenizedData(out_dir)


def _texts(dataset: Dataset, field: str) -> list[str]:
    # Blank rows (wikitext's empty lines, blank lines of a txt file) would only add runs of EOS.
    return [text for text in (format_example(row, field) for row in dataset) if text.strip()]


def _write_blocks(root: Path, texts: dict[str, list[str]], tokenizer, seq_len: int, dataset: str) -> dict[str, Any]:
    """Write <split>.npy for each split; return block and token counts and digests for meta.json."""
    meta: dict[str, Any] = {"n_blocks": {}, "n_tokens": {}, "digests": {}}
    for split, split_texts in texts.items():
        ids = tokenizer(split_texts, add_special_tokens=False, verbose=False)["input_ids"]
        eos = [tokenizer.eos_token_id]
        stream = np.fromiter(itertools.chain.from_iterable(x + eos for x in ids), dtype=np.int32)
        n_blocks = len(stream) // seq_len  # the remainder, shorter than a block, is dropped
        if n_blocks == 0:
            raise DatasetError(
                f"dataset {dataset!r}: the {split} split has {len(stream)} tokens, fewer than one block of "
                f"seq_len={seq_len}; use a smaller seq_len"
            )
        blocks = stream[: n_blocks * seq_len].reshape(n_blocks, seq_len)
        np.save(root / f"{split}.npy", blocks)
        meta["n_blocks"][split], meta["n_tokens"][split] = n_blocks, int(len(stream))
        meta["digests"][split] = hashlib.sha256(blocks.tobytes()).hexdigest()[:16]
    return meta


def _write_eval_problems(path: Path, test: Dataset) -> int:
    """One {"problem", "answer"} per line (the answer column, else the boxed answer of the solution);
    returns how many."""
    problems = []
    for row in test if has_answers(test) else []:
        answer = row["answer"] if "answer" in row else extract_answer(row["solution"])
        if answer is not None:
            problems.append({"problem": row["problem"], "answer": str(answer)})
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    return len(problems)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; a complete one written meanwhile by another process wins."""
    if out_dir.exists() and not is_complete(out_dir):
        shutil.rmtree(out_dir)  # left over from an interrupted writer
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if not is_complete(out_dir):
            raise
