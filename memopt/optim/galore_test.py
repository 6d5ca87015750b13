import warnings

import pytest
import torch
from torch import nn

from memopt.optim.galore import GaLoreAdamW, galore_param_groups, top_singular_vectors
from memopt.optim.testing import tall_wide_run

PROJ_TYPES = ["std", "reverse_std", "left", "right", "full"]


def _authors():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import galore_torch  # test-only: the reference implementation
    return galore_torch.GaLoreAdamW


def _run(opt_cls, proj_type, steps, gap, wd, seed=0, **kw):
    return tall_wide_run(opt_cls, proj_type, steps, gap, wd, seed=seed, **kw)


@pytest.mark.parametrize("proj_type", PROJ_TYPES)
def test_matches_authors_galore_torch(proj_type):
    # 14 steps with gap 4: SVDs at steps 0, 4, 8, 12 (3 refreshes after the first), weight decay on.
    ours, _ = _run(GaLoreAdamW, proj_type, steps=14, gap=4, wd=0.1)
    theirs, _ = _run(_authors(), proj_type, steps=14, gap=4, wd=0.1)
    start, _ = _run(GaLoreAdamW, proj_type, steps=0, gap=4, wd=0.1)
    for a, b, s in zip(ours, theirs, start):
        assert not torch.equal(a, s)  # something moved
        assert ((a - b).norm() / b.norm()).item() <= 1e-6


def test_refresh_schedule_and_projector_is_plain_tensor():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 4))
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": 3}], lr=0.01)
    projectors = []
    for _ in range(7):
        w.grad = torch.randn(8, 4)
        opt.step()
        projectors.append(opt.state[w]["proj"].clone())
    changed = [i for i in range(1, 7) if not torch.equal(projectors[i], projectors[i - 1])]
    assert changed == [3, 6]  # SVD at steps 0, 3, 6 (counter read before it moves)
    assert opt.state[w]["proj"].shape == (2, 4)  # tall weight: right projector r x n
    assert opt.state[w]["exp_avg"].shape == (8, 2)


def test_reset_state_on_refresh_zeroes_moments():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(6, 6))
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": 2}], lr=0.01, reset_state_on_refresh=True)
    for step in range(3):
        w.grad = torch.randn(6, 6)
        opt.step()
        if step == 1:
            assert opt.state[w]["moment_step"] == 2
    # step index 2 refreshed: moments restarted from zero, so only one gradient is in them
    assert opt.state[w]["moment_step"] == 1
    assert opt.state[w]["step"] == 3


def test_full_rank_warmup_then_projected():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(6, 4))
    opt = GaLoreAdamW([{"params": [w], "rank": 2, "update_proj_gap": 10}], lr=0.01, full_rank_warmup_steps=2)
    shapes = []
    for _ in range(3):
        w.grad = torch.randn(6, 4)
        opt.step()
        shapes.append(tuple(opt.state[w]["exp_avg"].shape))
    assert shapes == [(6, 4), (6, 4), (6, 2)]
    assert "proj" in opt.state[w]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"betas": (1.0, 0.9)}, "beta"),
        ({"proj_type": "diagonal"}, "std, reverse_std, left, right, full"),
        ({"update_proj_gap": 0}, "update_proj_gap"),
        ({"scale": 0.0}, "scale"),
        ({"full_rank_warmup_steps": -1}, "full_rank_warmup_steps"),
        ({"svd": "lanczos"}, "full, randomized"),
    ],
)
def test_bad_values_raise(kwargs, match):
    w = nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match=match):
        GaLoreAdamW([{"params": [w], "rank": 2}], **kwargs)


@pytest.mark.parametrize("rank", [0, 5, -1])
def test_rank_out_of_range(rank):
    w = nn.Parameter(torch.randn(4, 6))
    with pytest.raises(ValueError, match="rank"):
        GaLoreAdamW([{"params": [w], "rank": rank}])


def test_projected_weight_must_be_2d():
    with pytest.raises(ValueError, match="2-D"):
        GaLoreAdamW([{"params": [nn.Parameter(torch.randn(4))], "rank": 1}])


def test_param_groups_pick_attention_and_mlp_linears():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.self_attn = nn.Linear(4, 4)
            self.mlp = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 4))
            self.head = nn.Linear(4, 10)

    m = Block()
    plain, proj = galore_param_groups(m, rank=2)
    names = {id(p): n for n, p in m.named_parameters()}
    assert sorted(names[id(p)] for p in proj["params"]) == ["mlp.0.weight", "mlp.1.weight", "self_attn.weight"]
    assert "embed.weight" in {names[id(p)] for p in plain["params"]} and "head.weight" in {names[id(p)] for p in plain["params"]}
    assert proj["rank"] == 2 and proj["proj_type"] == "std"


def test_randomized_svd_finds_the_dominant_subspace_and_leaves_the_global_rng_alone():
    gen = torch.Generator().manual_seed(0)
    # rank-4 signal with a clear gap over the noise, as gradients have
    g = torch.randn(40, 4, generator=gen) @ torch.randn(4, 70, generator=gen) * 10 + torch.randn(40, 70, generator=gen) * 0.01
    u_full, vh_full = top_singular_vectors(g, 4, "full", seed=0)
    rng = torch.get_rng_state()
    u, vh = top_singular_vectors(g, 4, "randomized", seed=7)
    assert torch.equal(torch.get_rng_state(), rng)
    torch.testing.assert_close(u @ u.t(), u_full @ u_full.t(), atol=1e-4, rtol=0)  # same subspace, any basis
    torch.testing.assert_close(vh.t() @ vh, vh_full.t() @ vh_full, atol=1e-4, rtol=0)
    again = top_singular_vectors(g, 4, "randomized", seed=7)
    assert torch.equal(again[0], u) and torch.equal(again[1], vh)  # the seed alone decides


def test_randomized_svd_runs_are_reproducible():
    first, _ = _run(GaLoreAdamW, "std", steps=9, gap=4, wd=0.0, svd="randomized")
    second, opt = _run(GaLoreAdamW, "std", steps=9, gap=4, wd=0.0, svd="randomized")
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert opt.param_groups[1]["svd"] == "randomized"
