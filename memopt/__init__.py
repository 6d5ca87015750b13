"""memopt: train language models with memory-efficient optimizers and compare them honestly."""
import logging as _logging

# transformers imports torchao (a baseline's package) whenever it is installed: on a CPU machine torchao logs that
# its CUDA kernels do not load, and torch that its enums need no pytree registration; neither concerns a run here.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
