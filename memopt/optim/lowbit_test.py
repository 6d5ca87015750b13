"""The low-bit AdamWs on tensors large enough to be quantized (llama-micro's are not, for torchao): the state
is the packages' codes, scales and maps, measured as the formula says, resumed bit for bit; the update is
still AdamW's, up to the quantization.

torchao's step runs eager here (torch.compile stubbed out): compiled, each new shape and hyperparameter value recompiles
its subclass kernel, minutes on this machine; the state and its layout are the same either way, and the
compiled step runs in the contract tests (llama-micro) and in every training process."""
import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def eager_torchao(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)  # torchao compiles its step on each call

from memopt import optim
from memopt.memory import optimizer_state_bytes
from memopt.optim.testing import save_and_load

SHAPES = ((256, 64), (64,), (300, 7))  # 16384 elements: quantized; a vector and 2100 elements: full precision


def params(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.ParameterList([nn.Parameter(torch.randn(s)) for s in SHAPES])


def steps(model: nn.Module, opt: torch.optim.Optimizer, n: int, start: int = 0) -> None:
    for k in range(start, start + n):
        g = torch.Generator().manual_seed(k)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g) + 0.1 * p.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["adamw-8bit", "adamw-ao8bit", "adamw-ao4bit"])
def test_quantized_state_is_measured_as_the_formula_says_and_resumes_bit_for_bit(name):
    ref = params()
    opt = optim.build(name, ref, lr=1e-2)
    steps(ref, opt, 3)
    big, vector = ref[0], ref[1]
    codes = {k: v for k, v in opt.state[big].items() if k not in ("step",)}
    if name == "adamw-8bit":
        assert codes["state1"].dtype == torch.uint8 and opt.state[vector]["state1"].dtype == torch.float32
    else:
        assert all(type(v).__name__.startswith("OptimState") for v in codes.values())
        assert type(opt.state[vector]["exp_avg"]) is torch.Tensor
    assert optimizer_state_bytes(opt) == optim.expected_state_bytes(name, ref, lr=1e-2)

    ck = save_and_load(ref, opt)  # torch.load(weights_only=True)
    steps(ref, opt, 3, start=3)
    resumed = params(seed=1)
    resumed_opt = optim.build(name, resumed, lr=1e-2)
    resumed.load_state_dict(ck["model"])
    resumed_opt.load_state_dict(ck["optimizer"])
    # a resumed run holds what a fresh one does (bitsandbytes: one shared pair of quantization maps again)
    assert optimizer_state_bytes(resumed_opt) == optim.expected_state_bytes(name, resumed, lr=1e-2)
    steps(resumed, resumed_opt, 3, start=3)
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name, tolerance", [("adamw-8bit", 0.02), ("adamw-ao8bit", 0.02), ("adamw-ao4bit", 0.2)])
def test_the_update_is_adamws_up_to_the_quantization(name, tolerance):
    exact, low = params(), params()
    reference = torch.optim.AdamW(exact.parameters(), lr=1e-2, weight_decay=0.1)
    opt = optim.build(name, low, lr=1e-2, weight_decay=0.1)
    start = [p.detach().clone() for p in exact.parameters()]
    steps(exact, reference, 5)
    steps(low, opt, 5)
    for s, a, b in zip(start, exact.parameters(), low.parameters()):
        moved = (a - s).norm()
        assert (b - a).norm() <= tolerance * moved, f"{name}: {(b - a).norm() / moved:.3f} of AdamW's move"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the paged optimizer is allowed where CUDA is")
def test_paged_state_without_cuda_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match=r"^invalid paged: True; valid: False on a machine without CUDA"):
        optim.method_config("adamw-8bit", paged=True)
