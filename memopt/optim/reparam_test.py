import pytest
import torch

from memopt.optim import build, expected_state_bytes
from memopt.optim import loro as loro_mod
from memopt.optim.loro import LoROLinear, exact_step
from memopt.optim.optim_db import info, tiny_model
from memopt.optim.reparam import LowRankLinear, SparseLowRankLinear, magnitude_prune
from memopt.optim.testing import Tiny, train

X = torch.randn(3, 8)


def test_low_rank_forward_is_BA_scaled():
    model = Tiny()
    build("low-rank", model, rank=2, alpha=32.0)
    m = model.attn
    assert isinstance(m, LowRankLinear) and m.lora_A.shape == (2, 8) and m.lora_B.shape == (12, 2)
    expected = X @ (m.lora_B @ m.lora_A * 16.0).t()
    torch.testing.assert_close(m(X), expected)
    assert not hasattr(model.attn, "weight") or model.attn.weight is None


def test_sltrain_support_fixed_and_sized():
    model = Tiny()
    opt = build("sltrain", model, rank=2, density=0.25, seed=3)
    m = model.mlp
    assert isinstance(m, SparseLowRankLinear)
    assert m.sparse_index.numel() == int(0.25 * 8 * 12) == m.sparse_value.numel()
    assert m.sparse_index.unique().numel() == m.sparse_index.numel()
    index0, values0 = m.sparse_index.clone(), m.sparse_value.detach().clone()
    train(model, opt, range(3))
    assert torch.equal(m.sparse_index, index0) and not torch.equal(m.sparse_value, values0)
    w = m.dense_weight().detach() - m.low_rank().detach()
    support = torch.zeros(96, dtype=torch.bool)
    support[index0] = True
    assert torch.all(w.flatten()[~support] == 0)
    again = Tiny()
    build("sltrain", again, rank=2, density=0.25, seed=3)
    assert torch.equal(again.mlp.sparse_index, index0)  # support comes from the seed


def test_sltrain_runs_under_bf16_autocast():
    # the low-rank product comes out in bf16 there; S (fp32 parameter) joins it in that dtype, and gets a gradient
    model = Tiny()
    build("sltrain", model, rank=2, density=0.25)
    x = torch.randint(0, 16, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert model.mlp.sparse_value.grad is not None and model.mlp.sparse_value.grad.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(out.float(), model(x), rtol=5e-2, atol=5e-2)


def test_relora_merge_preserves_function_resets_and_prunes():
    model = Tiny()
    opt = build("relora", model, rank=2, relora_steps=3, restart_warmup_steps=2, prune_ratio=0.5)
    m = model.attn
    train(model, opt, range(2))
    assert not torch.all(m.lora_B == 0)
    w0 = m.weight.detach().clone()
    merged = m.dense_weight().detach().clone()
    x = torch.randint(0, 16, (2, 5))
    # step 3 = the merge: capture the function right after the update, before the merge
    captured = {}
    orig = opt.merge_and_reset

    def spy(n):
        captured["out"] = model(x).detach().clone()
        captured["dense"] = m.dense_weight().detach().clone()
        captured["m"] = opt.state[m.lora_A]["exp_avg"].clone()
        captured["v"] = opt.state[m.lora_A]["exp_avg_sq"].clone()
        orig(n)
    opt.merge_and_reset = spy
    train(model, opt, range(2, 3))
    torch.testing.assert_close(model(x), captured["out"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(m.weight.detach(), captured["dense"], rtol=1e-6, atol=1e-6)
    assert not torch.equal(m.weight.detach(), w0) and not torch.equal(captured["dense"], merged)
    assert torch.all(m.lora_B == 0) and not torch.all(m.lora_A == 0)
    pruned, pruned_sq = opt.state[m.lora_A]["exp_avg"], opt.state[m.lora_A]["exp_avg_sq"]
    assert (pruned == 0).sum() >= pruned.numel() // 2
    kept = pruned != 0
    assert torch.equal(pruned[kept], captured["m"][kept])
    # each moment keeps what is above its own median, and m only where v survived too (no m/eps step)
    above = {k: captured[k].abs() > torch.quantile(captured[k].abs().flatten(), 0.5) for k in ("m", "v")}
    assert torch.equal(kept, above["m"] & above["v"]) and torch.equal(pruned_sq != 0, above["v"])
    assert kept.any() and not (kept & (pruned_sq == 0)).any()


def test_relora_jagged_lr_restart():
    model = Tiny()
    opt = build("relora", model, rank=2, relora_steps=4, restart_warmup_steps=2)
    assert [opt.lr_factor(t) for t in range(1, 11)] == [1, 1, 1, 1, 0.0, 0.5, 1, 1, 0.0, 0.5]
    # the lr the group really used: first step after a merge does not move the params
    train(model, opt, range(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, opt, range(4, 5))
    after = model.state_dict()
    assert torch.equal(before["embed.weight"], after["embed.weight"])
    assert opt.param_groups[0]["lr"] == 1e-3  # restored for the outer scheduler


def test_magnitude_prune_quantile():
    t = torch.tensor([0.1, -0.5, 0.3, -0.05, 0.9, 0.2, -0.7, 0.6, 0.01, 0.4])
    assert torch.equal(magnitude_prune(t, 0.9) != 0, t.abs() > torch.quantile(t.abs(), 0.9))
    assert int((magnitude_prune(t, 0.5) != 0).sum()) == 5


def test_loro_exact_step_every_k(monkeypatch):
    calls = []
    real = loro_mod.exact_step

    def spy(*a):
        calls.append(opt.param_groups[1]["t"])
        return real(*a)
    monkeypatch.setattr(loro_mod, "exact_step", spy)
    model = Tiny()
    opt = build("loro", model, rank=2, exact_every=3)
    train(model, opt, range(7))
    assert sorted(set(calls)) == [3, 6] and len(calls) == 2 * 2  # two LoRO modules
    assert opt.state[model.attn.weight_in]["step"] == 1  # refreshed after step 6, one step since
    assert opt.state[model.embed.weight]["step"] == 1  # refresh "all" covers the regular group too


def test_loro_exact_step_is_truncated_tangent_step():
    torch.manual_seed(0)
    M, N, G = torch.randn(7, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    lr = 0.1
    M_new, N_new = exact_step(M, N, G @ N, G.t() @ M, lr)
    U, _ = torch.linalg.qr(M)
    V, _ = torch.linalg.qr(N)
    PU, PV = U @ U.t(), V @ V.t()
    tangent = PU @ G + G @ PV - PU @ G @ PV
    u, s, vh = torch.linalg.svd(M @ N.t() - lr * tangent)
    best = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]
    torch.testing.assert_close(M_new @ N_new.t(), best, rtol=1e-5, atol=1e-5)  # computed in fp32


def test_loro_cheap_step_scaled():
    lin = torch.nn.Linear(8, 12, bias=False)
    m = LoROLinear(lin, 2)
    opt = loro_mod.LoRO([{"params": [m.weight_out, m.weight_in], "loro": True}], lr=0.1, exact_every=100)
    M0 = m.weight_out.detach().clone()
    m.weight_out.grad, m.weight_in.grad = torch.ones(12, 2), torch.ones(8, 2)
    opt.step()
    # first Adam step: direction ≈ sign(g), step size lr; the class alone knows no model: r / max(shape) = 2/12
    torch.testing.assert_close(m.weight_out.detach(), M0 - 0.1 * (2 / 12) * (1 / (1 + 1e-6)))


def test_loro_cheap_step_follows_the_authors_rank_over_hidden_size():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=40, num_hidden_layers=1, num_attention_heads=2)
    groups = {}
    for base in ("hidden", "shape"):
        opt = build("loro", LlamaForCausalLM(config), rank=4, scaler_base=base)
        [groups[base]] = [g for g in opt.param_groups if g["loro"]]
    assert groups["hidden"]["lr_scaler"] == 4 / 16, "the authors' -1: rank / hidden size, for every factor"
    assert groups["shape"]["lr_scaler"] == -1.0, "per factor r / max(shape): 4/40 on the MLP factors"
    assert build("loro", LlamaForCausalLM(config), rank=4, lr_scaler=0.3).param_groups[1]["lr_scaler"] == 0.3
    # a plain module has no config.hidden_size: its target linears' commonest input width stands in
    assert build("loro", Tiny(d=8, hidden=12), rank=2).param_groups[1]["lr_scaler"] == 2 / 8


@pytest.mark.parametrize("name", ["low-rank", "sltrain", "relora", "loro"])
def test_formula_reads_the_model_before_or_after_the_swap(name):
    # the contract (memory_test.py) measures after the build; the formula also answers before it
    hp = info(name).samples[0]
    model = tiny_model()
    before = expected_state_bytes(name, model, **hp)
    build(name, model, **hp)
    assert expected_state_bytes(name, model, **hp) == before
