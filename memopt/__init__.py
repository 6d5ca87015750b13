"""memopt: train language models with memory-efficient optimizers and compare them honestly."""
