"""The fused paths (memopt.optim.kernels, issue 15) against the per-tensor code they replaced, kept here as
the reference: the same model, data and hyperparameters, every parameter and moment within TOLERANCE after
the run (the relative norm of the difference, as the authors' differential tests take it). GaLore, Fira and
APOLLO are held to the authors' packages instead (galore_test, fira_test, apollo_test: 1e-6, unchanged)."""
import math

import pytest
import torch

from memopt import optim
from memopt.optim.blockllm import BlockLLM
from memopt.optim.kernels import adam_, adam_directions, torch_adamw_kernel
from memopt.optim.loro import LoRO, exact_step
from memopt.optim.optim_db import tiny_model
from memopt.optim.spam import SPAM, StableSPAM, chunk_max_abs, pull_spikes_

TOLERANCE = 1e-6
# LoRO's exact step (fp32 QR, triangular solves, an SVD) turns the kernel's rounding-level difference in the
# directions (1e-7, flat over the cheap steps) into about 1.4e-6 per exact step: 3 of them in the run
EXACT_STEP_TOLERANCE = 1e-5
STEPS = 12


class PerTensorSPAM(SPAM):
    """SPAM's step before issue 15."""

    @staticmethod
    def _update(group, params, grads, states, factor, clip, sparse):
        for p, grad, state in zip(params, grads, states):
            m, v = state["exp_avg"], state["exp_avg_sq"]
            beta1, beta2 = group["betas"]
            if clip:
                bound = v * group["threshold"]
                grad = torch.where(grad.square() > bound, grad.sign() * bound.sqrt(), grad)
            m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            step_size = group["lr"] * math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
            direction = m / v.sqrt().add_(group["eps"])
            if "mask" in state:
                p[state["mask"]] -= direction * (step_size * factor)
            else:
                p.add_(direction, alpha=-step_size * factor)
            if group["weight_decay"] > 0:
                p.add_(p, alpha=-group["lr"] * group["weight_decay"])


class PerTensorStableSPAM(StableSPAM):
    """Stable-SPAM's step before issue 15 (it cloned each gradient)."""

    @staticmethod
    def _update(group, params, states, scale, reset):
        for p, state in zip(params, states):
            grad = p.grad.clone()
            g1, g2, g3, eps = group["gamma1"] * scale, group["gamma2"], group["gamma3"], group["eps"]
            p.mul_(1.0 - group["lr"] * group["weight_decay"])
            state["step"] += 1
            state["ema_step"] += 1
            k = state["ema_step"] if group["separate_ema_step"] else state["step"]
            max_g = grad.abs().max().float()
            state["m_max"].mul_(g3).add_(max_g, alpha=1.0 - g3)
            m_max_hat = state["m_max"] / (1.0 - g3 ** k)
            grad = torch.where(grad.abs() > m_max_hat, grad / max_g * m_max_hat, grad)
            norm = grad.norm().float()
            state["m_norm"].mul_(g1).add_(norm, alpha=1.0 - g1)
            state["v_norm"].mul_(g2).add_(norm.square(), alpha=1.0 - g2)
            target = (state["m_norm"] / (1.0 - g1 ** k)) / ((state["v_norm"] / (1.0 - g2 ** k)).sqrt() + eps)
            if norm > 0:
                grad = grad / norm * target
            if reset:
                state["exp_avg"].zero_()
                state["exp_avg_sq"].zero_()
                state["step"] = 1
                if not group["separate_ema_step"]:
                    state["ema_step"] = 1
            beta1, beta2 = group["betas"][0] * scale, group["betas"][1]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            bc1, bc2 = 1.0 - beta1 ** state["step"], 1.0 - beta2 ** state["step"]
            p.addcdiv_(m, (v.sqrt() / math.sqrt(bc2)).add_(eps), value=-group["lr"] / bc1)


class PerTensorLoRO(LoRO):
    """LoRO's step before issue 15."""

    def _direction(self, p, group):
        state = self.state[p]
        if not state:
            state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        beta1, beta2 = group["betas"]
        state["step"] += 1
        state["exp_avg"].mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
        size = group["lr"] * math.sqrt(1.0 - beta2 ** state["step"]) / (1.0 - beta1 ** state["step"])
        return state["exp_avg"] / state["exp_avg_sq"].sqrt().add_(group["eps"]), size

    @torch.no_grad()
    def step(self, closure=None):
        exact_any = False
        for group in self.param_groups:
            group["t"] += 1
            exact = group["t"] % group["exact_every"] == 0
            if not group["loro"]:
                for p in group["params"]:
                    d, size = self._direction(p, group)
                    p.add_(d, alpha=-size)
                    if group["weight_decay"] > 0:
                        p.add_(p, alpha=-group["lr"] * group["weight_decay"])
                continue
            ps = group["params"]
            for M, N in zip(ps[0::2], ps[1::2]):
                (dM, size), (dN, _) = self._direction(M, group), self._direction(N, group)
                if exact:
                    exact_any = True
                    M_new, N_new = exact_step(M, N, dM, dN, size)
                    M.copy_(M_new)
                    N.copy_(N_new)
                    continue
                for p, d in ((M, dM), (N, dN)):
                    c = group["lr_scaler"] if group["lr_scaler"] >= 0 else min(p.shape) / max(p.shape)
                    p.add_(d, alpha=-size * c)
                    if group["weight_decay"] > 0:
                        p.add_(p, alpha=-size * group["weight_decay"])
        if exact_any:
            self._refresh()


class ForeachBlockLLM(BlockLLM):
    """BlockLLM's Adam before issue 15: torch's formula on foreach ops."""

    def _adam(self, indices):
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        ps = [self._params[i] for i in indices if self._params[i].grad is not None]
        states = [self.state[p] for p in ps]
        for state in states:
            state["step"] += 1
        if wd > 0:
            torch._foreach_mul_(ps, 1.0 - lr * wd)
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_lerp_(exp_avgs, [p.grad for p in ps], 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, [p.grad for p in ps], [p.grad for p in ps], value=1.0 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denoms, [math.sqrt(1.0 - beta2 ** s["step"]) for s in states])
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(ps, exp_avgs, denoms, [-lr / (1.0 - beta1 ** s["step"]) for s in states])


# (method, hyperparameters, the reference: the old step's class, a registered name, or None for torch's foreach
# AdamW, and the tolerance): resets, spikes (threshold 2 clips many entries, 5000 the 300x ones of
# run_fixed_gradients), sparse moments, exact steps, weight decay, re-selections.
CASES = [
    pytest.param("spam", {"lr": 1e-2, "reset_interval": 5, "warmup_steps": 2, "clip_delay": 2, "weight_decay": 0.1},
                 PerTensorSPAM, TOLERANCE, id="spam-threshold-5000"),
    pytest.param("spam", {"lr": 1e-2, "reset_interval": 5, "warmup_steps": 2, "clip_delay": 2, "threshold": 2.0},
                 PerTensorSPAM, TOLERANCE, id="spam-threshold-2"),
    pytest.param("spam", {"lr": 1e-2, "reset_interval": 5, "clip_delay": 2, "threshold": 2.0, "density": 0.5},
                 PerTensorSPAM, TOLERANCE, id="spam-sparse"),
    pytest.param("stable-spam", {"lr": 1e-2, "reset_interval": 4, "total_steps": STEPS, "weight_decay": 0.1},
                 PerTensorStableSPAM, TOLERANCE, id="stable-spam"),
    pytest.param("stable-spam", {"lr": 1e-2, "reset_interval": 4, "separate_ema_step": True},
                 PerTensorStableSPAM, TOLERANCE, id="stable-spam-separate-ema"),
    pytest.param("loro", {"lr": 1e-2, "rank": 4, "exact_every": 4, "weight_decay": 0.1},
                 PerTensorLoRO, EXACT_STEP_TOLERANCE, id="loro"),
    pytest.param("blockllm", {"lr": 1e-2, "sparsity": 0.5, "update_freq": 3, "patience": 1, "param_update_interval": 2,
                              "weight_decay": 0.1}, ForeachBlockLLM, TOLERANCE, id="blockllm"),
    pytest.param("adamw", {"lr": 1e-2, "weight_decay": 0.1}, "adamw-foreach", TOLERANCE, id="adamw"),
    pytest.param("low-rank", {"lr": 1e-2, "rank": 4, "weight_decay": 0.1}, None, TOLERANCE, id="low-rank"),
]


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def run_fixed_gradients(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    """Seeded gradients that do not depend on the weights (along a training run Adam's normalization turns
    rounding-level differences of tiny gradient entries into whole steps: torch's own fused and foreach
    AdamW part by 1e-1 within 12 steps on the pattern task); every third step 1% of the entries spike 300x.
    The closure's loss goes up and down, so BlockLLM re-selects."""
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        for p in model.parameters():
            g = torch.randn(p.shape, generator=gen) * 1e-2
            if step % 3 == 2:
                g.view(-1)[torch.rand(p.numel(), generator=gen) < 0.01] *= 300.0
            p.grad = g if p.requires_grad else None
        opt.step(lambda: torch.tensor(float(step % 3)))
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name, hp, reference, tolerance", CASES)
def test_fused_path_matches_the_code_it_replaced(name, hp, reference, tolerance):
    fast_model, ref_model = tiny_model(), tiny_model()
    torch.manual_seed(0)  # a reparameterizing builder draws its factors from the global generator
    fast = optim.build(name, fast_model, **hp)
    torch.manual_seed(0)
    if isinstance(reference, str):
        ref = optim.build(reference, ref_model, **hp)
    else:
        ref = optim.build(name, ref_model, **hp)
        if reference is None:  # torch's AdamW: its foreach path is the reference
            for group in ref.param_groups:
                group.update(fused=False, foreach=True)
        else:
            ref.__class__ = reference  # the same optimizer, the old step
    run_fixed_gradients(fast_model, fast, STEPS)
    run_fixed_gradients(ref_model, ref, STEPS)
    for (key, a), b in zip(fast_model.state_dict().items(), ref_model.state_dict().values()):
        assert relative_difference(a, b) <= tolerance, key
    assert any(not torch.equal(a, b) for a, b in zip(fast_model.parameters(), tiny_model().parameters()))
    fast_states, ref_states = list(fast.state.values()), list(ref.state.values())
    assert len(fast_states) == len(ref_states)
    for fs, rs in zip(fast_states, ref_states):
        for k in ("exp_avg", "exp_avg_sq"):
            if k in fs:
                assert relative_difference(fs[k], rs[k]) <= tolerance, k


@pytest.mark.parametrize("chunk", [7, 1 << 16])
def test_pull_spikes_is_the_authors_clip_across_chunks(chunk, monkeypatch):
    # chunks smaller than the tensor (the CPU path on llama-60m shapes; the tiny model fits one chunk), spikes on
    # both sides of chunk boundaries, and a transposed (non-contiguous) gradient
    monkeypatch.setattr("memopt.optim.spam.CLIP_CHUNK", chunk)
    g = torch.Generator().manual_seed(2)
    grad = torch.randn(9, 11, generator=g)
    grad.view(-1)[[0, 6, 7, 50, 98]] = torch.tensor([40.0, -30.0, 25.0, -60.0, 35.0])
    for tensor in (grad, grad.t()):
        max_g, hat = tensor.abs().max(), torch.tensor(5.0)
        expected = torch.where(tensor.abs() > hat, tensor / max_g * hat, tensor)
        clipped, given = tensor.clone(), tensor.clone()
        pull_spikes_(clipped, max_g, hat)
        torch.testing.assert_close(clipped, expected, rtol=0, atol=0)
        assert (clipped != tensor).sum() == 5
        maxima = chunk_max_abs(given)  # the chunk maxima the optimizer passes: each chunk's own
        flat = given.reshape(-1)
        assert maxima.tolist() == [flat[s:s + chunk].abs().max().item() for s in range(0, flat.numel(), chunk)]
        pull_spikes_(given, max_g, hat, maxima)
        torch.testing.assert_close(given, expected, rtol=0, atol=0)


@pytest.mark.parametrize("transformers_eps", [False, True])
def test_kernel_equals_its_foreach_form(transformers_eps, monkeypatch):
    # two step counts (two kernel calls), a per-tensor lr factor and a grad scale, weight decay
    shapes = [(5, 3), (7,), (4, 4)]

    def run(fused: bool) -> list[torch.Tensor]:
        monkeypatch.setattr("memopt.optim.kernels.has_fused_kernel", lambda tensors: fused)
        g = torch.Generator().manual_seed(1)
        params = [torch.randn(s, generator=g) for s in shapes]
        moments = [[torch.zeros(s) for s in shapes] for _ in range(2)]
        for t in range(1, 4):
            grads = [torch.randn(s, generator=g) for s in shapes]
            adam_(params, grads, *moments, [t, t + 1, t], lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1,
                  transformers_eps=transformers_eps, lr_scales=[1.0, 0.5, 2.0],
                  grad_scales=[torch.tensor(2.0), torch.tensor(1.0), torch.tensor(0.5)])
        return params + moments[0] + moments[1]

    for a, b in zip(run(True), run(False)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_directions_are_the_transformers_adam_direction():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(6, 2, generator=g), torch.randn(3, generator=g)]
    m, v = [torch.randn_like(x).abs() for x in grads], [torch.rand_like(x) for x in grads]
    m_ref, v_ref = [x.clone() for x in m], [x.clone() for x in v]
    directions = adam_directions(grads, m, v, [3, 7], betas=(0.9, 0.999), eps=1e-6)
    for d, grad, mr, vr in zip(directions, grads, m_ref, v_ref):
        mr.mul_(0.9).add_(grad, alpha=0.1)
        vr.mul_(0.999).addcmul_(grad, grad, value=0.001)
        torch.testing.assert_close(d, mr / (vr.sqrt() + 1e-6), rtol=1e-6, atol=0)


def test_torch_adamw_takes_the_fused_kernel_where_torch_has_one():
    cpu = [torch.nn.Parameter(torch.zeros(2))]
    assert torch_adamw_kernel(cpu) == {"fused": True, "foreach": False}
    assert torch_adamw_kernel(cpu, fused=False) == {"fused": False, "foreach": True}
    assert torch_adamw_kernel([torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]) == {"fused": False, "foreach": True}
    model = tiny_model()
    assert optim.build("adamw", model).defaults["fused"] and optim.build("adamw-foreach", model).defaults["foreach"]
