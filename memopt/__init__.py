"""memopt: train language models with memory-efficient optimizers and compare them honestly."""
import logging


class _ImportNotes(logging.Filter):
    """transformers imports torchao (installed for the `adamw-ao*` baselines) in every process that loads a model, for
    its quantizers. Its import-time notes are about this machine, not the run, and would come with every run: CUDA
    extensions it cannot load here, no Triton on a CPU machine, and torch deprecating how torchao registers its enums."""

    NOTES = ("Failed to load ", "Warning: Detected no triton", "%s is an Enum subclass and is now natively supported")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTES)


for _name in ("torchao", "torchao.kernel.intmm", "torch.utils._pytree"):  # a logger's filter misses its children's
    logging.getLogger(_name).addFilter(_ImportNotes())
