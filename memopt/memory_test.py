import pytest
import torch
from torch import nn

from memopt.memory import expected_state_bytes, optimizer_state_bytes
from memopt.optim import build
from memopt.optim.optim_db import STEPS, TINY_MODEL, sample_params, tiny_model
from memopt.optim.testing import run_pattern


@pytest.mark.parametrize("name, hp", [pytest.param(n, hp, id=sid) for n, hp, sid in sample_params()])
def test_measured_equals_formula(name, hp):
    # every registered method, each contract sample (memopt.optim.optim_db): after its special events
    model = tiny_model()
    opt = build(name, model, **hp)
    run_pattern(model, opt, range(STEPS), TINY_MODEL["vocab_size"])
    measured = optimizer_state_bytes(opt)
    assert measured > 0
    assert measured == expected_state_bytes(name, model, **hp)


def test_galore_holds_less_than_adamw():
    a, g = tiny_model(), tiny_model()
    oa, og = build("adamw", a), build("galore", g, rank=4)
    run_pattern(a, oa, range(3), TINY_MODEL["vocab_size"])
    run_pattern(g, og, range(3), TINY_MODEL["vocab_size"])
    assert optimizer_state_bytes(og) < optimizer_state_bytes(oa)


def test_shared_storage_counted_once_and_views_charge_their_storage():
    p = nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.1)
    base = torch.zeros(100)
    opt.state[p]["a"] = base
    opt.state[p]["b"] = base[:10]  # a view: same storage, counted once
    opt.state[p]["c"] = torch.zeros(5, dtype=torch.float64)
    opt.state[p]["param_alias"] = p.detach()  # the parameter's own storage is not state
    assert optimizer_state_bytes(opt) == 100 * 4 + 5 * 8
    del opt.state[p]["a"]
    assert optimizer_state_bytes(opt) == 100 * 4 + 5 * 8  # the view alone still pins 400 bytes


def test_inner_optimizer_and_plain_objects_are_counted():
    p = nn.Parameter(torch.zeros(4))

    class Holder:
        def __init__(self):
            self.t = torch.zeros(7)

    outer = torch.optim.SGD([p], lr=0.1)
    inner = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    inner.step()
    outer.inner = inner
    outer.state[p]["projector"] = Holder()
    assert optimizer_state_bytes(outer) == 2 * 4 * 4 + 4 + 7 * 4  # Adam moments + step + Holder.t
