"""The memory breakdown measured on real training steps of the micro model, against each part's formula."""
from __future__ import annotations

import pytest
import torch

from memopt import optim
from memopt.breakdown import PHASES, SavedTensorMeter, StepMemory, activation_bytes, storage_bytes
from memopt.loss import CausalLMLoss
from memopt.models import build_model
from memopt.monitor import MIB, peak_rss_bytes, rss_bytes
from memopt.vocabulary import MemoryPart, Metric

ROWS, SEQ, VOCAB = 4, 16, 64


def micro():
    model = build_model("llama-micro", vocab_size=VOCAB, max_position_embeddings=SEQ, seed=0)
    model.config.use_cache = False
    return model


def train_steps(method: str, steps: int = 3, at_step: int = 2, **hp):
    """Steps shaped as the trainer's (memopt/trainer.py), the probe at the same boundaries; the breakdown."""
    model = micro()
    runtime = rss_bytes()
    opt = optim.build(method, model, **hp)
    loss_of = CausalLMLoss(model)
    probe = StepMemory(model, opt, torch.device("cpu"), runtime, lambda: optim.expected_state_bytes(method, model, **hp),
                       (ROWS, SEQ))
    probe.at_step = at_step
    gen = torch.Generator().manual_seed(0)
    results = []
    for step in range(1, steps + 1):
        with probe.measuring(step):
            loss = loss_of(torch.randint(0, VOCAB, (ROWS, SEQ), generator=gen))
            probe.boundary("forward")
            loss.backward()
            probe.boundary("backward")
            opt.step(lambda: loss.detach())
            probe.boundary("optimizer_step")
        opt.zero_grad(set_to_none=True)
        results.append(probe.take())
    return model, opt, results


def test_saved_tensor_meter_counts_what_a_llama_layer_saves_and_lets_it_go():
    model = micro()
    before = [t.clone() for t in model.parameters()]
    with SavedTensorMeter(exclude=model.parameters()) as meter:
        loss = CausalLMLoss(model)(torch.randint(0, VOCAB, (ROWS, SEQ)))
        at_end_of_forward = meter.live
        loss.backward()
    assert meter.peak == at_end_of_forward == activation_bytes(model.config, ROWS, SEQ)
    assert meter.live == 0, "backward frees every saved tensor"
    CausalLMLoss(model)(torch.randint(0, VOCAB, (ROWS, SEQ))).backward()  # outside: not counted any more
    assert meter.peak == at_end_of_forward
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "the hooks change nothing"


def test_adamw_breakdown_matches_every_formula_on_the_measured_step_only():
    model, opt, results = train_steps("adamw", lr=1e-3)
    assert results[0] is None and results[2] is None, "only step 2 is measured"
    b = results[1]
    n_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert b.step == 2 and b.device == "cpu"
    assert b.measured[MemoryPart.WEIGHTS] == storage_bytes([*model.parameters(), *model.buffers()])
    assert b.estimate[MemoryPart.WEIGHTS] == n_bytes == b.estimate[MemoryPart.GRADIENTS]
    assert b.measured[MemoryPart.GRADIENTS] == n_bytes
    assert b.measured[MemoryPart.OPTIMIZER_STATE] == b.estimate[MemoryPart.OPTIMIZER_STATE] > 2 * n_bytes - 1
    assert b.measured[MemoryPart.ACTIVATIONS] == b.estimate[MemoryPart.ACTIVATIONS] > 0
    assert set(b.boundaries) == set(PHASES) and all(r["rss"] > 0 for r in b.boundaries.values())
    # the step's own peak holds the runtime and every part that coexists; the rest is what is left over
    # (the kernel keeps its high-water mark and the RSS it reports in per-CPU batches of pages: up to ~1 MiB apart)
    assert b.peak >= max(r["rss"] for r in b.boundaries.values()) - MIB
    assert b.rest == b.peak - b.runtime - sum(b.measured.values())
    # the reading before the model, handed in: no higher than at the step (a micro model can add under a page batch)
    assert 0 < b.runtime <= b.boundaries["step_start"]["rss"]
    assert peak_rss_bytes() >= b.peak, "the process's peak survives the step's reset"
    metrics = b.metrics()
    assert metrics[Metric.memory_part(MemoryPart.ACTIVATIONS)] == b.measured[MemoryPart.ACTIVATIONS] / MIB
    assert metrics[Metric.memory_part(MemoryPart.ACTIVATIONS, estimate=True)] == b.estimate[MemoryPart.ACTIVATIONS] / MIB
    assert metrics[Metric.memory_at("forward", "rss")] > 0 and metrics[Metric.REST_MB] == b.rest / MIB


def test_layerwise_galore_leaves_no_gradient_and_its_formula_says_so():
    *_, results = train_steps("galore-layerwise", rank=4, update_proj_gap=2)
    b = results[1]
    assert b.measured[MemoryPart.GRADIENTS] == b.estimate[MemoryPart.GRADIENTS] == 0
    assert b.measured[MemoryPart.OPTIMIZER_STATE] == b.estimate[MemoryPart.OPTIMIZER_STATE]


def test_frozen_tensors_save_fewer_activations_and_have_no_formula():
    *_, dense = train_steps("adamw", lr=1e-3)
    model, _, sparse = train_steps("blockllm", sparsity=0.8)
    b = sparse[1]
    assert not all(p.requires_grad for p in model.parameters())
    assert b.estimate[MemoryPart.ACTIVATIONS] is None
    assert Metric.memory_part(MemoryPart.ACTIVATIONS, estimate=True) not in b.metrics()
    assert 0 < b.measured[MemoryPart.ACTIVATIONS] < dense[1].measured[MemoryPart.ACTIVATIONS]
    assert b.measured[MemoryPart.GRADIENTS] == b.estimate[MemoryPart.GRADIENTS] < dense[1].measured[MemoryPart.GRADIENTS]


@pytest.mark.parametrize("family", ["qwen2", "other"])
def test_activation_formula_covers_llama_and_qwen2_only(family):
    from transformers import GPT2Config, Qwen2Config, Qwen2ForCausalLM

    if family == "other":
        assert activation_bytes(GPT2Config(), ROWS, SEQ) is None
        return
    torch.manual_seed(0)  # GQA (2 key/value heads for 4) and tied embeddings
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    with SavedTensorMeter(exclude=model.parameters()) as meter:
        CausalLMLoss(model)(torch.randint(0, VOCAB, (ROWS, SEQ))).backward()
    assert meter.peak == activation_bytes(model.config, ROWS, SEQ)
