import pytest
import torch
from torch import nn

from memopt.optim import build
from memopt.optim.galore import GaLoreAdamW, galore_param_groups
from memopt.optim.galore_layerwise import LayerwiseGaLoreAdamW
from memopt.optim.testing import Tiny, batch, loss_of, resume_matches

HP = dict(rank=2, update_proj_gap=2, weight_decay=0.1)  # SVDs at 0, 2, 4; decay on


def _micro_loss(model, step, micro, accum):
    x, y = batch(step * 10 + micro)
    return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()) / accum


def _train(model, opt, steps, accum, grads_seen=None):
    """The training loop's shape: `accum` backward passes, then optimizer.step(closure), zero_grad."""
    for step in range(steps):
        for micro in range(accum):
            _micro_loss(model, step, micro, accum).backward()
            if grads_seen is not None:
                grads_seen.append([p.grad is not None for p in model.parameters()])
        opt.step(lambda: None)
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("accum", [1, 3])
def test_same_parameters_as_plain_galore(accum):
    plain_model, lw_model = Tiny(), Tiny()
    plain = GaLoreAdamW(galore_param_groups(plain_model, 2, update_proj_gap=2), lr=0.01, weight_decay=0.1,
                        update_proj_gap=2)
    lw = build("galore-layerwise", lw_model, lr=0.01, accumulation_steps=accum, **HP)
    _train(plain_model, plain, 5, accum)
    seen = []
    _train(lw_model, lw, 5, accum, seen)
    start = Tiny()
    for (name, a), b, s in zip(plain_model.named_parameters(), lw_model.parameters(), start.parameters()):
        assert torch.equal(a, b), name
        assert not torch.equal(a, s), name
    # gradients: kept while accumulating, gone after the last micro-batch's backward
    for i, flags in enumerate(seen):
        last = (i % accum) == accum - 1
        assert all(not f for f in flags) if last else all(flags)
    assert lw.optimizer_steps == 5


def test_resume_bit_for_bit_with_a_closure():
    # testing.train's closure does zero_grad + backward inside step(closure): the hooks update there
    def make():
        m = Tiny()
        return m, build("galore-layerwise", m, **HP)
    assert resume_matches(make, k=3, n=4)  # resumed part crosses the refreshes at 4 and 6


def test_lr_is_read_when_the_hook_runs():
    model = Tiny()
    opt = build("galore-layerwise", model, **HP)
    before = [p.detach().clone() for p in model.parameters()]
    for g in opt.param_groups:
        g["lr"] = 0.0  # as a scheduler would set it; weight decay is lr-scaled, so nothing may move
    loss_of(model, 0).backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_remove_hooks_and_bad_accumulation():
    model = Tiny()
    opt = build("galore-layerwise", model, **HP)
    opt.remove_hooks()
    loss_of(model, 0).backward()
    assert all(p.grad is not None for p in model.parameters())  # no longer consumed in backward
    with pytest.raises(ValueError, match="accumulation_steps"):
        LayerwiseGaLoreAdamW(Tiny().parameters(), accumulation_steps=0)
