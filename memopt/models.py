"""Model presets and builders.

A model name is one of three things: a preset from PRESETS (random init: the
LLaMA sizes of the benchmark paper, arXiv 2505.22922, and the Qwen2 sizes of
Qwen's public configs), a local folder written by
`save_pretrained`, or a hub name such as `distilgpt2` (both loaded pretrained
and fine-tuned, or in the pretrain regime their architecture from random init).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)


@dataclass(frozen=True)
class LlamaPreset:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None  # None: as many as attention heads (no GQA)
    tie_word_embeddings: bool = False
    family: str = "llama"  # llama or qwen2 (Qwen2: q/k/v biases, GQA, RoPE theta 1e6)


def Qwen2Preset(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, tied: bool) -> LlamaPreset:
    return LlamaPreset(hidden, intermediate, layers, heads, kv_heads, tied, family="qwen2")


# The benchmark paper's table (METHODS.md), plus `llama-micro` for tests.
PRESETS: dict[str, LlamaPreset] = {
    "llama-micro": LlamaPreset(32, 88, 2, 2),
    "llama-9m": LlamaPreset(128, 352, 4, 4),
    "llama-20m": LlamaPreset(256, 688, 4, 4),
    "llama-35m": LlamaPreset(384, 1024, 6, 8),
    "llama-60m": LlamaPreset(512, 1376, 8, 8),
    "llama-130m": LlamaPreset(768, 2048, 12, 12),
    "llama-350m": LlamaPreset(1024, 2736, 24, 16),
    "llama-1b": LlamaPreset(2048, 5461, 24, 32),
    "llama-7b": LlamaPreset(4096, 11008, 32, 32),
    "llama-13b": LlamaPreset(5120, 13824, 40, 40),
    # Qwen2's public config.json sizes (Qwen/Qwen2-0.5B, Qwen2-1.5B, Qwen2-7B). "qwen2-1b" is Qwen2-1.5B.
    "qwen2-0.5b": Qwen2Preset(896, 4864, 24, 14, 2, tied=True),
    "qwen2-1b": Qwen2Preset(1536, 8960, 28, 12, 2, tied=True),
    "qwen2-1.5b": Qwen2Preset(1536, 8960, 28, 12, 2, tied=True),
    "qwen2-7b": Qwen2Preset(3584, 18944, 28, 28, 4, tied=False),
}

# The paper's vocabulary; models trained on the project's own tokenizer use its size instead.
PAPER_VOCAB_SIZE = 32000


def preset_config(name: str, vocab_size: int = PAPER_VOCAB_SIZE, max_position_embeddings: int = 1024) -> PretrainedConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    p = PRESETS[name]
    sizes = dict(
        vocab_size=vocab_size,
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_hidden_layers,
        num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_key_value_heads or p.num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        hidden_act="silu",
        tie_word_embeddings=p.tie_word_embeddings,
    )
    if p.family == "qwen2":
        return Qwen2Config(**sizes, rms_norm_eps=1e-6, rope_theta=1_000_000.0)
    return LlamaConfig(**sizes)


def is_preset(name: str) -> bool:
    return name in PRESETS


def build_model(
    name: str,
    vocab_size: int = PAPER_VOCAB_SIZE,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    pretrained: bool = True,
) -> PreTrainedModel:
    """A preset from random init (seeded), or a local folder / hub name: its pretrained weights, or with
    `pretrained=False` its architecture from random init (seeded; the pretrain regime)."""
    if is_preset(name):
        torch.manual_seed(seed)
        config = preset_config(name, vocab_size, max_position_embeddings)
        return (Qwen2ForCausalLM if isinstance(config, Qwen2Config) else LlamaForCausalLM)(config)
    if not pretrained:
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(name))
    # safetensors only: pickled weights (pytorch_model.bin) can run code when loaded (memopt/preflight.py says so first)
    return AutoModelForCausalLM.from_pretrained(name, use_safetensors=True)


def max_positions(name: str) -> int | None:
    """How many positions a non-preset model allows (None: no limit known)."""
    config = AutoConfig.from_pretrained(name)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return None


def is_local_model(name: str) -> bool:
    return Path(name).is_dir() and (Path(name) / "config.json").is_file()


PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # what torch.load or pickle would read


def safetensors_files(folder: Path) -> list[Path]:
    """The safetensors weights of a save_pretrained folder (one file, or shards with their index)."""
    return sorted(folder.glob("*.safetensors"))
