"""Memory-efficient optimizers. Pure PyTorch: no MLflow, Prefect or transformers here."""
from memopt.optim import adamw  # noqa: F401  (registers "adamw")
from memopt.optim import galore  # noqa: F401  (registers "galore")
from memopt.optim import blockllm  # noqa: F401  (registers "blockllm")
from memopt.optim.blockllm import BlockLLM
from memopt.optim.galore import GaLoreAdamW, galore_param_groups
from memopt.optim.registry import MethodSpec, build, expected_state_bytes, hyperparameters, methods, register, spec

METHODS = methods()

__all__ = [
    "METHODS", "BlockLLM", "GaLoreAdamW", "MethodSpec", "build", "expected_state_bytes", "galore_param_groups", "hyperparameters",
    "methods", "register", "spec",
]
