import math

import pytest
import torch

from memopt.optim.spam import SPAM, StableSPAM, spam_warmup_factor


def _one_param_step(opt, p, g):
    p.grad = torch.tensor(g, dtype=torch.float32)
    opt.step()


def test_spike_clip_exact_values():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = SPAM([p], lr=0.0, reset_interval=0, clip_delay=2, threshold=5000.0)
    _one_param_step(opt, p, [1.0, 1.0, 1.0])  # step 1: no clipping yet, v = 0.001
    _one_param_step(opt, p, [1.0, 100.0, -1000.0])  # bound g² <= 5000 * 0.001 = 5
    r5 = math.sqrt(5000 * 0.001)
    clipped = torch.tensor([1.0, r5, -r5])
    st = opt.state[p]
    torch.testing.assert_close(st["exp_avg"], 0.9 * 0.1 * torch.ones(3) + 0.1 * clipped, rtol=1e-6, atol=0)
    torch.testing.assert_close(st["exp_avg_sq"], 0.999 * 0.001 * torch.ones(3) + 0.001 * clipped**2, rtol=1e-6, atol=0)


def test_no_clip_before_delay_and_after_reset():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = SPAM([p], lr=0.0, reset_interval=4, clip_delay=2, warmup_steps=2)
    for g in ([1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1e4, 1.0]):  # step 4 is a reset: v just zeroed, no clip
        _one_param_step(opt, p, g)
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.1 * 1e4, 0.1]))


def test_warmup_factor_shape():
    assert spam_warmup_factor(1, 500, 150) == 1.0
    assert spam_warmup_factor(499, 500, 150) == 1.0
    assert spam_warmup_factor(500, 500, 150) == pytest.approx(0.01)
    assert spam_warmup_factor(500 + 75, 500, 150) == pytest.approx(1 - 0.99 * (1 + math.cos(math.pi * 75 / 151)) / 2)
    assert spam_warmup_factor(650, 500, 150) == 1.0
    assert spam_warmup_factor(1000, 500, 150) == pytest.approx(0.01)
    assert spam_warmup_factor(1000, 0, 150) == 1.0
    factors = [spam_warmup_factor(500 + j, 500, 150) for j in range(150)]
    assert all(a < b for a, b in zip(factors, factors[1:]))


def test_reset_zeroes_moments_and_scales_update():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = SPAM([p], lr=0.1, reset_interval=3, warmup_steps=5, threshold=0.0)
    for _ in range(2):
        _one_param_step(opt, p, [1.0, -2.0])
    before = p.detach().clone()
    _one_param_step(opt, p, [3.0, 4.0])  # step 3: reset, factor 0.01, bias step count goes on (authors)
    st = opt.state[p]
    g = torch.tensor([3.0, 4.0])
    torch.testing.assert_close(st["exp_avg"], 0.1 * g)
    torch.testing.assert_close(st["exp_avg_sq"], 0.001 * g * g)
    assert st["step"] == 3
    step_size = 0.1 * math.sqrt(1 - 0.999**3) / (1 - 0.9**3)
    expected = before - step_size * 0.01 * (0.1 * g) / ((0.001 * g * g).sqrt() + 1e-6)
    torch.testing.assert_close(p.detach(), expected)


def test_sparse_momentum_mask():
    w = torch.nn.Parameter(torch.randn(6, 5))
    opt = SPAM([w], lr=0.01, density=0.3, reset_interval=3, seed=1)
    w0 = w.detach().clone()
    _one_param_step(opt, w, torch.ones(6, 5).tolist())
    mask = opt.state[w]["mask"]
    assert mask.dtype == torch.bool and int(mask.sum()) == int(0.3 * 30)
    assert opt.state[w]["exp_avg"].shape == (9,)
    assert torch.equal(w.detach()[~mask], w0[~mask]) and not torch.equal(w.detach()[mask], w0[mask])
    _one_param_step(opt, w, torch.ones(6, 5).tolist())
    _one_param_step(opt, w, torch.ones(6, 5).tolist())  # reset: new mask, same count
    assert int(opt.state[w]["mask"].sum()) == 9 and not torch.equal(opt.state[w]["mask"], mask)


def test_stable_spam_adaptive_clip_and_normalization():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = StableSPAM([p], lr=0.0, reset_interval=0)
    g1 = torch.tensor([1.0, -2.0, 0.5])
    _one_param_step(opt, p, g1.tolist())
    m1 = opt.state[p]["exp_avg"].clone()
    g2 = torch.tensor([10.0, 1.0, -1.0])
    _one_param_step(opt, p, g2.tolist())
    th, ga1, ga2 = 0.999, 0.7, 0.9
    m_max = th * (1 - th) * 2.0 + (1 - th) * 10.0
    hat = m_max / (1 - th**2)
    clipped = torch.where(g2.abs() > hat, g2 / 10.0 * hat, g2)
    assert clipped[0] == pytest.approx(hat) and clipped[1] == 1.0  # only the spike is pulled down
    n1, n2 = g1.norm(), clipped.norm()
    m_norm = (ga1 * (1 - ga1) * n1 + (1 - ga1) * n2) / (1 - ga1**2)
    v_norm = (ga2 * (1 - ga2) * n1**2 + (1 - ga2) * n2**2) / (1 - ga2**2)
    normalized = clipped / n2 * (m_norm / (v_norm.sqrt() + 1e-8))
    torch.testing.assert_close(opt.state[p]["exp_avg"], 0.9 * m1 + 0.1 * normalized, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(opt.state[p]["m_max"], torch.tensor(m_max), rtol=1e-5, atol=0)


def test_stable_spam_reset_uses_fresh_moments():
    p = torch.nn.Parameter(torch.zeros(3))
    opt = StableSPAM([p], lr=0.01, reset_interval=3)
    for g in ([1.0, 2.0, 3.0], [2.0, 1.0, 0.5], [0.3, -1.0, 2.0]):
        _one_param_step(opt, p, g)
    st = opt.state[p]
    assert st["step"] == 1
    # a fresh start means m = 0.1 g and v = 0.001 g² for the same g: m² · 0.001 == v · 0.01
    assert st["exp_avg"].abs().min() > 0
    torch.testing.assert_close(st["exp_avg"] ** 2 * 0.001, st["exp_avg_sq"] * 0.01, rtol=1e-5, atol=0)
    m3 = st["exp_avg"].clone()
    _one_param_step(opt, p, [1.0, 1.0, 1.0])  # continues from the fresh moments, not from zero
    assert not torch.allclose(opt.state[p]["exp_avg"] ** 2 * 0.001, opt.state[p]["exp_avg_sq"] * 0.01)
    assert torch.all((opt.state[p]["exp_avg"] - 0.9 * m3).abs() > 0)


def test_stable_spam_schedule():
    assert StableSPAM.schedule_scale(5, None, 0.5) == 1.0
    assert StableSPAM.schedule_scale(0, 100, 0.5) == 1.0
    assert StableSPAM.schedule_scale(101, 100, 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize("cls,kw,word", [(SPAM, {"lr": -1}, "lr"), (SPAM, {"density": 0.0}, "density"),
                                          (SPAM, {"betas": (1.0, 0.9)}, "betas"), (SPAM, {"reset_interval": -1}, "reset"),
                                          (StableSPAM, {"gamma3": 1.0}, "gamma3"), (StableSPAM, {"eps": -1}, "eps")])
def test_argument_checks(cls, kw, word):
    with pytest.raises(ValueError, match=word):
        cls([torch.nn.Parameter(torch.zeros(2, 2))], **kw)
