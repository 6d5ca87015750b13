import warnings

import pytest
import torch
from torch import nn

from memopt.optim.fira import FiraAdamW
from memopt.optim.testing import tall_wide_run


def _authors(groups, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fira import FiraAdamW as Theirs  # test-only: the reference implementation
        for g in groups:  # their group key for GaLore's scale is `alpha`
            if "scale" in g:
                g["alpha"] = g.pop("scale")
        return Theirs(groups, no_deprecation_warning=True, **kw)


def _run(make, proj_type, steps):
    return tall_wide_run(make, proj_type, steps, gap=3, wd=0.1)


@pytest.mark.parametrize("proj_type", ["std", "reverse_std", "left", "right"])
def test_matches_authors_fira(proj_type):
    # 11 steps, gap 3: SVDs at 0, 3, 6, 9 (three refreshes after the first); the limiter acts from step 2
    ours, opt = _run(FiraAdamW, proj_type, 11)
    theirs, _ = _run(_authors, proj_type, 11)
    start, _ = _run(FiraAdamW, proj_type, 0)
    for a, b, s in zip(ours, theirs, start):
        assert not torch.equal(a, s)
        assert ((a - b).norm() / b.norm()).item() <= 1e-6


def test_differs_from_galore_by_the_residual():
    from memopt.optim.galore import GaLoreAdamW
    fira, _ = _run(FiraAdamW, "std", 4)
    galore, _ = _run(GaLoreAdamW, "std", 4)
    assert not torch.equal(fira[0], galore[0]) and torch.equal(fira[2], galore[2])  # plain tensor: same AdamW


def test_limiter_caps_norm_growth_at_1_01():
    # step 1: a gradient almost inside the rank-2 subspace, so the residual is small; the full-rank
    # gradients after it would make it jump, and the limiter lets its norm grow only 1.01x per step.
    # float64, so the update's out-of-subspace part can be measured well below the weights' size.
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(10, 4, dtype=torch.float64))
    opt = FiraAdamW([{"params": [w], "rank": 2, "update_proj_gap": 100, "scale": 1.0}], lr=0.01)
    w.grad = torch.randn(10, 2, dtype=torch.float64) @ torch.randn(2, 4, dtype=torch.float64)
    w.grad += 1e-3 * torch.randn(10, 4, dtype=torch.float64)
    opt.step()
    norms = [opt.state[w]["limiter_norm"].item()]
    for _ in range(3):
        before = w.detach().clone()
        w.grad = torch.randn(10, 4, dtype=torch.float64)
        opt.step()
        norms.append(opt.state[w]["limiter_norm"].item())
        proj, t = opt.state[w]["proj"], opt.state[w]["step"]
        delta = w.detach() - before
        outside = delta - delta @ proj.t() @ proj  # the residual's share of the update
        step_size = 0.01 * (1 - 0.999**t) ** 0.5 / (1 - 0.9**t)
        assert outside.norm().item() == pytest.approx(step_size * norms[-1], rel=1e-6)
    for prev, cur in zip(norms, norms[1:]):
        assert cur == pytest.approx(1.01 * prev, rel=1e-6)  # 1e-6: the +1e-8 in the ratio's denominator


def test_exact_residual_keeps_galores_subspace_update():
    # paper form: S = G - P P^T G has no component in the subspace, so the in-subspace part of the
    # update is GaLore's; the authors' form (residual G - scale P P^T G) adds to it
    from memopt.optim.galore import GaLoreAdamW
    torch.manual_seed(0)
    w0, g = torch.randn(10, 4), torch.randn(10, 4)
    deltas = {}
    for key, cls, kw in (("paper", FiraAdamW, {"exact_residual": True}), ("authors", FiraAdamW, {}), ("galore", GaLoreAdamW, {})):
        w = nn.Parameter(w0.clone())
        opt = cls([{"params": [w], "rank": 2, "scale": 0.25}], lr=0.1, **kw)
        w.grad = g.clone()
        opt.step()
        proj = opt.state[w]["proj"]
        deltas[key] = (w.detach() - w0) @ proj.t()  # right projector (tall weight): in-subspace component
    torch.testing.assert_close(deltas["paper"], deltas["galore"], rtol=0, atol=1e-6)
    assert (deltas["authors"] - deltas["galore"]).abs().max() > 1e-3


@pytest.mark.parametrize("kw, word", [({"exact_residual": 1}, "exact_residual"), ({"lr": 0.0}, "lr"),
                                      ({"proj_type": "x"}, "proj_type"), ({"proj_type": "full"}, "proj_type")])
def test_bad_values_raise(kw, word):
    with pytest.raises(ValueError, match=word):
        FiraAdamW([{"params": [nn.Parameter(torch.randn(4, 4))], "rank": 2}], **kw)
