"""Memory-efficient optimizers. Pure PyTorch: no MLflow, Prefect or transformers here."""
from memopt.optim import adamw  # noqa: F401  (registers "adamw", "adamw-foreach")
from memopt.optim import galore  # noqa: F401  (registers "galore")
from memopt.optim import blockllm  # noqa: F401  (registers "blockllm")
from memopt.optim import apollo  # noqa: F401  (registers "apollo", "apollo-mini")
from memopt.optim import spam  # noqa: F401  (registers "spam", "stable-spam")
from memopt.optim import reparam  # noqa: F401  (registers "low-rank", "sltrain", "relora")
from memopt.optim import loro  # noqa: F401  (registers "loro")
from memopt.optim import fira  # noqa: F401  (registers "fira")
from memopt.optim import golore  # noqa: F401  (registers "golore")
from memopt.optim import galore_layerwise  # noqa: F401  (registers "galore-layerwise")
from memopt.optim.blockllm import BlockLLM
from memopt.optim.galore import GaLoreAdamW, galore_param_groups
from memopt.optim.registry import (
    MethodSpec, build, expected_state_bytes, hyperparameters, method_config, methods, register, spec,
)

METHODS = methods()

__all__ = [
    "METHODS", "BlockLLM", "GaLoreAdamW", "MethodSpec", "build", "expected_state_bytes", "galore_param_groups", "hyperparameters",
    "method_config", "methods", "register", "spec",
]
