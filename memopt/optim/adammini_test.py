"""adam-mini: the authors' blocks on a LLaMA (one second-moment entry per head for q/k, per row for v, o, the
MLP, embeddings and lm_head, one per norm), and a single process on a multi-GPU machine steps alone."""
import torch

from memopt import optim
from memopt.optim.optim_db import TINY_MODEL, tiny_model
from memopt.optim.testing import run_pattern

VOCAB = TINY_MODEL["vocab_size"]


def test_second_moment_blocks_follow_the_architecture():
    model = tiny_model()
    opt = optim.build("adam-mini", model, lr=1e-2)
    run_pattern(model, opt, range(1), VOCAB)
    heads = model.config.num_attention_heads
    blocks = {name: opt.state[p]["vmean"].numel() for name, p in model.named_parameters()}
    assert blocks["model.layers.0.self_attn.q_proj.weight"] == blocks["model.layers.0.self_attn.k_proj.weight"] == heads
    for name in ("self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"):
        assert blocks[f"model.layers.0.{name}.weight"] == model.get_parameter(f"model.layers.0.{name}.weight").shape[0]
    assert blocks["model.embed_tokens.weight"] == blocks["lm_head.weight"] == VOCAB  # one per token
    assert blocks["model.norm.weight"] == blocks["model.layers.1.input_layernorm.weight"] == 1


def test_a_single_process_on_a_machine_with_several_gpus_steps(monkeypatch):
    # Adam-mini 1.1.1 takes the GPU count for the process count and would all-gather without a process group
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    model = tiny_model()
    opt = optim.build("adam-mini", model, lr=1e-2)
    assert opt.world_size == 1
    losses = run_pattern(model, opt, range(2), VOCAB)
    assert all(torch.isfinite(torch.tensor(losses)))
