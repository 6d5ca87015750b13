import dataclasses
import inspect

import pytest
import torch
from torch import nn

import memopt.optim as optim
from memopt.optim import BlockLLM, GaLoreAdamW, build, expected_state_bytes, hyperparameters, method_config, spec
from memopt.optim.apollo import APOLLO, ApolloConfig
from memopt.optim.blockllm import BlockLLMConfig
from memopt.optim.fira import FiraAdamW, FiraConfig
from memopt.optim.galore import GaLoreConfig, galore_param_groups
from memopt.optim.galore_layerwise import LayerwiseGaLoreAdamW, LayerwiseGaLoreConfig
from memopt.optim.golore import GoLoreAdamW, GoLoreConfig
from memopt.optim.loro import LoRO, LoROConfig
from memopt.optim.spam import SPAM, SPAMConfig, StableSPAM, StableSPAMConfig


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 16)
        self.lm_head = nn.Linear(8, 10)


def test_methods_registered_in_order():
    assert optim.METHODS[:4] == ["adamw", "adamw-foreach", "galore", "blockllm"]


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


def test_galore_variants_extend_its_declaration():
    for config in (FiraConfig, GoLoreConfig, LayerwiseGaLoreConfig):
        assert issubclass(config, GaLoreConfig)
        assert {k: v for k, v in config.defaults().items() if k in GaLoreConfig.defaults()} == GaLoreConfig.defaults()


# The classes keep the authors' signatures; where a default is the registry's too, it is read from the declaration.
CLASS_DEFAULTS = [
    (GaLoreAdamW, GaLoreConfig, {"lr"}),  # the authors' class: lr 1e-3; their scripts (the registry): 0.01
    (FiraAdamW, FiraConfig, {"lr"}), (GoLoreAdamW, GoLoreConfig, {"lr"}), (LayerwiseGaLoreAdamW, LayerwiseGaLoreConfig, {"lr"}),
    (BlockLLM, BlockLLMConfig, set()), (APOLLO, ApolloConfig, set()), (SPAM, SPAMConfig, set()),
    # the authors' Stable-SPAM class: gamma1 0.7, gamma2 0.9; their pretraining scripts (the registry): 0.85, 0.99999
    (StableSPAM, StableSPAMConfig, {"gamma1", "gamma2"}), (LoRO, LoROConfig, set()),
]


@pytest.mark.parametrize("cls, config, differ", CLASS_DEFAULTS, ids=[c.__name__ for c, _, _ in CLASS_DEFAULTS])
def test_class_defaults_are_the_declared_ones(cls, config, differ):
    params = {}
    for klass in cls.__mro__:  # Fira, GoLore and layer-wise pass their parent's arguments through **kwargs
        if klass is torch.optim.Optimizer:
            break
        for name, p in inspect.signature(klass.__init__).parameters.items():
            if p.default is not inspect.Parameter.empty:
                params.setdefault(name, p.default)
    shared = set(params) & set(config.defaults())
    assert len(shared) >= 6  # the Adam block and the method's own arguments
    assert {k: params[k] for k in shared - differ} == {k: config.defaults()[k] for k in shared - differ}
    assert all(params[k] != config.defaults()[k] for k in differ)


def test_galore_param_groups_defaults_are_the_declared_ones():
    (group,) = [g for g in galore_param_groups(Net(), rank=2) if "rank" in g]
    options = {k: v for k, v in group.items() if k not in ("params", "rank")}
    assert options == {k: GaLoreConfig.defaults()[k] for k in options}


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="valid methods: adamw, adamw-foreach, galore, blockllm"):
        build("adafactor", Net())


@pytest.mark.parametrize(
    "name, hp, message",
    [
        ("galore", {"rank": 9}, "invalid rank: 9; valid: 1 <= rank <= 8 (smaller dimension of a 8x8 weight)"),
        ("blockllm", {"sparsity": 1.5}, "invalid sparsity: 1.5; valid: 0 <= sparsity < 1"),
        ("adamw", {"eps": "tiny"}, "invalid eps: 'tiny'; valid: eps >= 0"),
    ],
)
def test_bad_values_raise_one_message_shape(name, hp, message):
    with pytest.raises(ValueError) as err:
        build(name, Net(), **hp)
    assert str(err.value) == message


def test_galore_formula_checks_rank_too():
    with pytest.raises(ValueError, match="rank"):
        expected_state_bytes("galore", Net(), rank=9)


def test_hyperparameters_merge_and_method_config_checks():
    assert hyperparameters("golore")["total_steps"] is None  # merged, not checked: the run fact comes later
    with pytest.raises(ValueError, match="^invalid total_steps"):
        method_config("golore")
    c = method_config("golore", total_steps=100, betas=[0.9, 0.99])  # a list, as JSON gives it
    assert isinstance(c, GoLoreConfig) and c.betas == (0.9, 0.99) and c.total_steps == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.rank = 4
    assert method_config("blockllm", frozen_patterns=["embed"]).frozen_patterns == ("embed",)


def test_spec_defaults_cannot_be_edited_through():
    spec("galore").defaults["rank"] = 1
    assert spec("galore").defaults["rank"] == 128
