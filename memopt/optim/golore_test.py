import pytest
import torch
from torch import nn

from memopt.optim.galore import GaLoreAdamW
from memopt.optim.golore import GoLoreAdamW


def _grads(steps, seed=1):
    """A fixed gradient sequence for a tall (12x6) and a wide (5x9) weight, independent of the weights."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(12, 6, generator=gen), torch.randn(5, 9, generator=gen)) for _ in range(steps)]


def _run(cls, grads, proj_type="std", **kw):
    torch.manual_seed(0)
    tall, wide = nn.Parameter(torch.randn(12, 6)), nn.Parameter(torch.randn(5, 9))
    opt = cls([{"params": [tall, wide], "rank": 3, "update_proj_gap": 4, "proj_type": proj_type}], lr=0.01, **kw)
    projs = []  # per step: {param index: projector(s) after the step}
    for g_tall, g_wide in grads:
        tall.grad, wide.grad = g_tall.clone(), g_wide.clone()
        opt.step()
        projs.append([{k: v.clone() for k, v in opt.state[p].items() if k.startswith("proj")} for p in (tall, wide)])
    return (tall, wide), opt, projs


def _svd_projector(g, side, r=3):
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    return vh[:r] if side == "right" else u[:, :r]


def test_svd_before_the_switch_random_orthonormal_after():
    grads = _grads(12)
    # total 12, ratio 0.5: refreshes at 0, 4 use the SVD (step < 6), the one at 8 is random
    _, _, projs = _run(GoLoreAdamW, grads, rand_ratio=0.5, total_steps=12)
    for i, side in ((0, "right"), (1, "left")):  # tall: right projector r x n; wide: left m x r
        for step in (0, 4):
            assert torch.equal(projs[step][i]["proj"], _svd_projector(grads[step][i], side))
        assert torch.equal(projs[7][i]["proj"], projs[4][i]["proj"])  # no refresh between
        p = projs[8][i]["proj"]
        assert not torch.allclose(p.abs(), _svd_projector(grads[8][i], side).abs(), atol=1e-3)
        gram = p @ p.t() if side == "right" else p.t() @ p
        torch.testing.assert_close(gram, torch.eye(3), rtol=0, atol=1e-5)


def test_full_projector_random_orthonormal():
    _, _, projs = _run(GoLoreAdamW, _grads(5), proj_type="full", rand_ratio=0.0, total_steps=5)
    for i in (0, 1):
        left, right = projs[0][i]["proj_left"], projs[0][i]["proj_right"]
        torch.testing.assert_close(left.t() @ left, torch.eye(3), rtol=0, atol=1e-5)
        torch.testing.assert_close(right @ right.t(), torch.eye(3), rtol=0, atol=1e-5)
        assert not torch.equal(projs[4][i]["proj_left"], left)  # redrawn at the refresh at 4


def test_random_projectors_are_seeded():
    grads = _grads(5)
    a = _run(GoLoreAdamW, grads, rand_ratio=0.0, total_steps=5, seed=3)[2]
    b = _run(GoLoreAdamW, grads, rand_ratio=0.0, total_steps=5, seed=3)[2]
    c = _run(GoLoreAdamW, grads, rand_ratio=0.0, total_steps=5, seed=4)[2]
    assert all(torch.equal(x[i]["proj"], y[i]["proj"]) for x, y in zip(a, b) for i in (0, 1))
    assert not torch.equal(a[0][0]["proj"], c[0][0]["proj"])
    assert not torch.equal(a[0][0]["proj"], a[4][0]["proj"])  # a new draw at each refresh


def test_without_switch_and_carry_it_is_galore_bit_for_bit():
    grads = _grads(9)
    (gt, gw), _, _ = _run(GaLoreAdamW, grads)
    (t, w), _, _ = _run(GoLoreAdamW, grads, rand_ratio=None, project_momentum=False)
    assert torch.equal(gt, t) and torch.equal(gw, w)
    (t2, _), _, _ = _run(GoLoreAdamW, grads, rand_ratio=None)  # momentum carried into the new basis
    assert not torch.equal(gt, t2)


def test_first_moment_is_carried_into_the_new_basis():
    grads = _grads(5)
    (tall, _), opt, projs = _run(GoLoreAdamW, grads[:4], rand_ratio=0.0, total_steps=8)
    m_old = opt.state[tall]["exp_avg"].clone()
    p_old = projs[3][0]["proj"]
    tall.grad = grads[4][0].clone()
    opt.step()  # step index 4: refresh
    p_new = opt.state[tall]["proj"]
    expected = 0.9 * (m_old @ p_old @ p_new.t()) + 0.1 * (grads[4][0] @ p_new.t())
    torch.testing.assert_close(opt.state[tall]["exp_avg"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw, word", [({"total_steps": None}, "total_steps"), ({"rand_ratio": 1.5}, "rand_ratio"),
                                      ({"total_steps": 0}, "total_steps"), ({"project_momentum": 1}, "project_momentum")])
def test_bad_values_raise(kw, word):
    with pytest.raises(ValueError, match=word):
        GoLoreAdamW([{"params": [nn.Parameter(torch.randn(4, 4))], "rank": 2}], **{"total_steps": 10, **kw})
