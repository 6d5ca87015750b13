import pytest
import torch
from torch import nn

import memopt.optim as optim
from memopt.optim import BlockLLM, GaLoreAdamW, build, expected_state_bytes, hyperparameters, spec


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 16)
        self.lm_head = nn.Linear(8, 10)


def test_methods_registered_in_order():
    assert optim.METHODS[:3] == ["adamw", "galore", "blockllm"]


def test_builds_the_right_classes_with_defaults():
    assert isinstance(build("adamw", Net()), torch.optim.AdamW)
    g = build("galore", Net(), rank=4)
    assert isinstance(g, GaLoreAdamW)
    assert g.defaults["lr"] == 0.01 and g.defaults["eps"] == 1e-6 and g.defaults["scale"] == 0.25
    assert [grp.get("rank") for grp in g.param_groups] == [None, 4]
    b = build("blockllm", Net(), sparsity=0.9, update_freq=1000, patience=100)
    assert isinstance(b, BlockLLM) and b.patience == 100 and b.update_freq == 1000 and b.param_update_interval == 20


def test_galore_defaults_match_the_authors_scripts():
    d = spec("galore").defaults
    assert (d["lr"], d["rank"], d["update_proj_gap"], d["scale"], d["proj_type"]) == (0.01, 128, 200, 0.25, "std")
    assert (d["reset_state_on_refresh"], d["full_rank_warmup_steps"]) == (False, 0)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="valid methods: adamw, galore, blockllm"):
        build("adafactor", Net())


@pytest.mark.parametrize("name", ["adamw", "galore", "blockllm"])
def test_unknown_hyperparameter_lists_valid_ones(name):
    with pytest.raises(ValueError, match=r"no hyperparameter 'block_size'.*valid: .*lr"):
        hyperparameters(name, block_size=4)


@pytest.mark.parametrize(
    "name, hp, match",
    [
        ("galore", {"rank": 9}, r"1 <= rank <= 8"),
        ("galore", {"rank": 0}, "rank"),
        ("galore", {"rank": 4, "lr": 0.0}, "lr"),
        ("galore", {"rank": 4, "proj_type": "bogus"}, "std, reverse_std, left, right, full"),
        ("galore", {"rank": 4, "update_proj_gap": 0}, "update_proj_gap"),
        ("blockllm", {"sparsity": 1.5}, "0 <= sparsity < 1"),
        ("blockllm", {"lr": -1.0}, "lr"),
        ("blockllm", {"patience": 0}, "patience"),
    ],
)
def test_bad_values_raise(name, hp, match):
    with pytest.raises(ValueError, match=match):
        build(name, Net(), **hp)


def test_galore_formula_checks_rank_too():
    with pytest.raises(ValueError, match="rank"):
        expected_state_bytes("galore", Net(), rank=9)
