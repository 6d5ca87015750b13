"""The fused loss equals transformers' loss and gradients, on the model families it fuses."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from memopt.loss import CausalLMLoss, fusable, linear_cross_entropy
from memopt.models import build_model


def _grads_of(model: nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], rtol: float) -> None:
    assert ours.keys() == ref.keys()
    for name in ref:
        err = ((ours[name] - ref[name]).norm() / ref[name].norm()).item()
        assert err < rtol, f"{name}: relative difference {err:.1e}"


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


@pytest.mark.parametrize("name", ["llama-micro", "qwen2-tied", "gpt2"])
@pytest.mark.parametrize("chunk", [7, 1024])  # several uneven chunks; one chunk for everything
def test_loss_and_gradients_equal_transformers(name: str, chunk: int) -> None:
    if name == "gpt2":
        model = _gpt2()
    elif name == "qwen2-tied":  # tied embeddings: lm_head.weight is the embedding, one gradient for both uses
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=88, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
        assert model.lm_head.weight is model.model.embed_tokens.weight
    else:
        model = build_model(name, vocab_size=300, seed=0)
    model.config.use_cache = False
    x = torch.randint(0, 300, (3, 19), generator=torch.Generator().manual_seed(1))
    ref_loss = model(input_ids=x, labels=x).loss
    ref = _grads_of(model, ref_loss)
    fused = CausalLMLoss(model, chunk_tokens=chunk)
    assert fused.fused
    loss = fused(x)
    assert abs(loss.item() - ref_loss.item()) < 1e-5 * ref_loss.item()
    _assert_close(_grads_of(model, loss), ref, rtol=1e-5)


def test_scaled_loss_scales_gradients_and_frozen_head_gets_none() -> None:
    model = build_model("llama-micro", vocab_size=300, seed=0)
    x = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    ref = _grads_of(model, model(input_ids=x, labels=x).loss / 4)  # what gradient accumulation does
    model.lm_head.weight.requires_grad_(False)
    ours = _grads_of(model, CausalLMLoss(model, chunk_tokens=5)(x) / 4)
    assert "lm_head.weight" not in ours
    del ref["lm_head.weight"]
    _assert_close(ours, ref, rtol=1e-5)


def test_ignored_targets_match_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(23, 8, generator=gen, requires_grad=True)
    weight = torch.randn(50, 8, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (23,), generator=gen)
    targets[::4] = -100
    ref = nn.functional.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100)
    ref_grads = torch.autograd.grad(ref, (hidden, weight))
    loss = linear_cross_entropy(hidden, weight, targets, chunk_tokens=6)
    grads = torch.autograd.grad(loss, (hidden, weight))
    torch.testing.assert_close(loss, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_bf16_autocast_close_to_transformers_under_autocast() -> None:
    model = build_model("llama-micro", vocab_size=300, seed=0)
    x = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss = model(input_ids=x, labels=x).loss
        loss = CausalLMLoss(model, chunk_tokens=9)(x)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref_loss.item()) < 1e-2 * ref_loss.item()
    _assert_close(_grads_of(model, loss), _grads_of(model, ref_loss), rtol=3e-2)


def test_no_grad_computes_the_loss_only() -> None:
    model = build_model("llama-micro", vocab_size=300, seed=0)
    x = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert abs(CausalLMLoss(model)(x).item() - model(input_ids=x, labels=x).loss.item()) < 1e-5


def test_models_it_cannot_fuse_use_transformers_loss() -> None:
    model = build_model("llama-micro", vocab_size=300, seed=0)
    model.lm_head = nn.Linear(model.config.hidden_size, 300, bias=True)  # logits = h W^T + b: not fused
    assert not fusable(model)
    x = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(6))
    loss_fn = CausalLMLoss(model)
    assert not loss_fn.fused
    torch.testing.assert_close(loss_fn(x), model(input_ids=x, labels=x).loss)


def test_chunk_tokens_checked() -> None:
    with pytest.raises(ValueError, match="chunk_tokens"):
        linear_cross_entropy(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2, dtype=torch.long), chunk_tokens=0)
