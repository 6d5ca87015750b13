import pytest
import torch

from memopt.optim import build
from memopt.optim.apollo import APOLLO, next_seed, projector
from memopt.optim.targets import split_params
from memopt.optim.testing import Tiny, train


@pytest.mark.parametrize("scale_type,scale,scale_front", [("channel", 1.0, False), ("tensor", 128.0, True),
                                                          ("channel", 4.0, True)])
def test_matches_authors_package(scale_type, scale, scale_front):
    from apollo_torch import APOLLOAdamW  # test-only reference

    ours_model, ref_model = Tiny(), Tiny()
    assert {p.shape[0] >= p.shape[1] for p in split_params(ours_model)[0]} == {True, False}  # both projector sides
    hp = dict(rank=2, update_proj_gap=3, scale=scale, scale_type=scale_type, scale_front=scale_front)
    ours = build("apollo", ours_model, lr=1e-2, weight_decay=0.01, **hp)
    targets, rest = split_params(ref_model)
    ref = APOLLOAdamW([{"params": rest}, {"params": targets, "rank": 2, "update_proj_gap": 3, "scale": scale,
                                          "proj_type": "std", "proj": "random", "scale_type": scale_type}],
                      lr=1e-2, weight_decay=0.01, scale_front=scale_front)
    train(ours_model, ours, range(8))  # refreshes at steps 0, 3, 6
    train(ref_model, ref, range(8))
    for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters()):
        rel = ((a - b).norm() / b.norm()).item()
        assert rel <= 1e-6, (name, rel)
        assert not torch.equal(a, Tiny().state_dict()[name])  # it did train


def test_projector_refresh_and_seed():
    model = Tiny()
    opt = build("apollo", model, rank=2, update_proj_gap=3)
    w = model.attn.weight
    seed0 = opt.state[w]["seed"]
    projs = []
    for s in range(7):
        train(model, opt, range(s, s + 1))
        projs.append(opt.state[w]["proj"].clone())
    assert torch.equal(projs[0], projector(tuple(w.shape), 2, seed0, w.dtype, w.device))
    assert torch.equal(projs[0], projs[2]) and not torch.equal(projs[2], projs[3])
    assert torch.equal(projs[3], projector(tuple(w.shape), 2, next_seed(seed0), w.dtype, w.device))
    assert projs[0].shape == (2, 8)  # 12×8 weight: right projector r×n
    assert opt.state[model.mlp.weight]["proj"].shape == (8, 2)  # 8×12 weight: left projector m×r
    assert opt.state[w]["exp_avg"].shape == (12, 2) and opt.state[model.mlp.weight]["exp_avg"].shape == (2, 12)


def test_regenerated_projector_gives_same_run():
    runs = []
    for regen in (False, True):
        model = Tiny()
        opt = build("apollo-mini", model, update_proj_gap=2, regenerate_projector=regen)
        train(model, opt, range(5))
        assert ("proj" in opt.state[model.attn.weight]) is not regen
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_limiter_caps_norm_growth():
    w = torch.nn.Parameter(torch.randn(6, 4))
    opt = APOLLO([{"params": [w], "rank": 2, "scale_type": "tensor"}], lr=0.0)
    w.grad = torch.ones(6, 4)
    opt.step()
    first = opt.state[w]["scaled_grad"].clone()
    w.grad = torch.ones(6, 4) * 1000  # a spike
    opt.step()
    assert opt.state[w]["scaled_grad"] <= first * 1.01 * (1 + 1e-6)


@pytest.mark.parametrize("kw,word", [({"rank": 0}, "rank"), ({"scale_type": "row"}, "scale_type"),
                                     ({"update_proj_gap": 0}, "update_proj_gap"), ({"scale": 0.0}, "scale")])
def test_group_checks(kw, word):
    w = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=word):
        APOLLO([{"params": [w], "rank": 1, **kw}])
    with pytest.raises(ValueError, match="lr"):
        APOLLO([w], lr=-1.0)
