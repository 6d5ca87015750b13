import math

import pytest
import torch
from torch import nn

from memopt.optim import testing
from memopt.optim.blockllm import BlockLLM, rank_and_fill


class Tiny(nn.Module):
    """embed 11x8, three 8x8 linears (+bias), lm_head 11x8: 392 elements; 6 candidate tensors of 216."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 8)
        self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])
        self.lm_head = nn.Linear(8, 11, bias=False)

    def forward(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return self.lm_head(h)


def make_closure(model, opt, gen, losses=None):
    """A training-loop closure; `losses` (an iterator) replaces the returned loss value to script the history."""
    def closure():
        opt.zero_grad()
        x = torch.randint(0, 11, (4, 6), generator=gen)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), torch.roll(x, -1, 1).flatten())
        loss.backward()
        return loss if losses is None else torch.tensor(next(losses))
    return closure


def candidates(model):
    return [(n, p) for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n]


def test_first_step_selects_by_gradient_and_updates():
    model = Tiny()
    opt = BlockLLM(model.named_parameters(), lr=0.01, sparsity=0.7)
    assert opt.selection_pending and all(p.requires_grad for _, p in candidates(model))
    gen = torch.Generator().manual_seed(1)
    # the gradients the first step will see, computed on a copy with every candidate trainable
    ref = Tiny()
    make_closure(ref, torch.optim.SGD(ref.parameters(), lr=0.0), torch.Generator().manual_seed(1))()
    norms = [p.grad.norm().item() for n, p in candidates(ref)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step(make_closure(model, opt, gen))
    sel = opt.selected.tolist()
    budget = int(0.3 * 216)  # the candidates' elements: the frozen embed and lm_head are not in the budget
    assert opt.budget == budget
    # greedy fill by ‖g‖ descending
    used, expect = 0, [False] * 6
    for i in sorted(range(6), key=lambda i: -norms[i]):
        if used + candidates(model)[i][1].numel() <= budget:
            expect[i], used = True, used + candidates(model)[i][1].numel()
    assert sel == expect
    for (n, p), on in zip(candidates(model), sel):
        assert p.requires_grad == on
        assert (not torch.equal(p.detach(), before[n])) == on  # first step updates exactly the selected
        assert (p in opt.state) == on
    for n in ("embed.weight", "lm_head.weight"):
        p = dict(model.named_parameters())[n]
        assert not p.requires_grad and p.grad is None and p not in opt.state and torch.equal(p.detach(), before[n])


def test_element_budget_holds_and_is_filled():
    model = Tiny()
    opt = BlockLLM(model.named_parameters(), sparsity=0.6)
    opt.step(make_closure(model, opt, torch.Generator().manual_seed(2)))
    numels = [p.numel() for _, p in candidates(model)]
    chosen = sum(k for k, s in zip(numels, opt.selected.tolist()) if s)
    left = [k for k, s in zip(numels, opt.selected.tolist()) if not s]
    assert 0 < chosen <= opt.budget == int(0.4 * 216)
    assert all(chosen + k > opt.budget for k in left)  # no unselected tensor would still fit


def test_rank_by_norm_over_exp_visits():
    gen = torch.Generator().manual_seed(0)
    norms = torch.tensor([4.0, 3.0, 2.9, float("nan")])
    visits = torch.tensor([2, 0, 0, 0])
    # keys: 4/e^(2/4)=2.43, 3, 2.9, unknown -> order 1, 2, 0, 3
    assert rank_and_fill(norms, visits, 4, [10, 10, 10, 10], 25, gen).tolist() == [False, True, True, False]
    # without visits tensor 0 wins
    assert rank_and_fill(norms, torch.zeros(4, dtype=torch.long), 4, [10, 10, 10, 10], 15, gen).tolist() == [True, False, False, False]
    # an oversized top tensor is skipped, the rest fill the budget
    assert rank_and_fill(norms, visits, 4, [10, 30, 10, 10], 25, gen).tolist() == [True, False, True, False]
    # budget below every tensor: the best one alone
    assert rank_and_fill(norms, visits, 4, [10, 10, 10, 10], 5, gen).tolist() == [False, True, False, False]


def test_reselection_fires_exactly_by_the_patience_rule():
    torch.manual_seed(3)
    losses = (torch.rand(40) * 2 + 1).tolist()
    model = Tiny()
    opt = BlockLLM(model.named_parameters(), sparsity=0.7, update_freq=2, patience=3, param_update_interval=1000)
    closure = make_closure(model, opt, torch.Generator().manual_seed(4), iter(losses))
    fired, expected, hist = [], [], []
    for k, loss in enumerate(losses, start=1):
        n_sel = opt.num_selections
        opt.step(closure)
        if opt.num_selections > n_sel and k > 1:
            fired.append(k)
            # states reset (fresh zeros for exactly the new selection), history cleared
            sel = [p for (_, p), on in zip(candidates(model), opt.selected.tolist()) if on]
            assert set(opt.state) == set(sel) and opt.loss_history == []
            assert all(s["step"] == 0 and not s["exp_avg"].any() and not s["exp_avg_sq"].any() for s in opt.state.values())
        # reference rule: authors' _should_adjust_parameters
        hist.append(loss)
        if k % 2 == 0 and len(hist) > 3 and sum(hist) / len(hist) < sum(hist[-3:]) / 3:
            expected.append(k)
            hist = []
    assert expected and fired == expected
    assert len(opt.param_groups) == 1


def test_visits_count_selections():
    model = Tiny()
    opt = BlockLLM(model.named_parameters(), sparsity=0.7, update_freq=1, patience=1, param_update_interval=1000)
    closure = make_closure(model, opt, torch.Generator().manual_seed(5), iter([1.0, 1.0, 2.0]))
    opt.step(closure)
    first = opt.selected.clone()
    opt.step(closure)
    assert opt.num_selections == 1  # step 2: mean 1.0 is not below the last loss 1.0
    opt.step(closure)
    assert opt.num_selections == 2  # step 3: mean 4/3 < 2
    assert torch.equal(opt.visits, first.long() + opt.selected.long())


def batches(n, seed=6):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 11, (4, 6), generator=gen) for _ in range(n)]


def lm_loss(model, x):
    return nn.functional.cross_entropy(model(x).flatten(0, 1), torch.roll(x, -1, 1).flatten())


def engine_step(model, opt, x):
    testing.engine_step(opt, lm_loss(model, x))


def closure_step(model, opt, x):
    def closure():
        opt.zero_grad()
        loss = lm_loss(model, x)
        loss.backward()
        return loss
    opt.step(closure)


def check_flags(model, opt):
    """requires_grad is the selection plus the armed probes; a probe is never selected, never has state."""
    for i, (_, p) in enumerate(candidates(model)):
        assert p.requires_grad == (bool(opt.selected[i]) or i in opt.probes)
        assert (p in opt.state) == bool(opt.selected[i])
        assert getattr(p, "_blockllm_probe") == (i in opt.probes)
    assert not any(opt.selected[i] for i in opt.probes)


def test_probe_is_measured_when_backward_runs_outside_step():
    model = Tiny()
    opt = BlockLLM(model.named_parameters(), sparsity=0.7, param_update_interval=2, update_freq=1000)
    xs = batches(5)
    engine_step(model, opt, xs[0])
    assert opt.probes == []
    engine_step(model, opt, xs[1])  # 2 steps done: one probe armed for the next backward
    assert len(opt.probes) == 1
    i = opt.probes[0]
    p = candidates(model)[i][1]
    assert p.requires_grad and p.grad is None and not opt.selected[i]
    check_flags(model, opt)
    opt.grad_norms[i] = float("nan")  # forget it, so only the probe can fill it in
    before = [q.detach().clone() for _, q in candidates(model)]
    loss = lm_loss(model, xs[2])
    loss.backward()
    true_norm = p.grad.norm().item()
    opt.step(lambda: loss.detach())  # step 3
    assert opt.grad_norms[i].item() == pytest.approx(true_norm, rel=1e-6) and true_norm > 0
    assert torch.equal(p.detach(), before[i]) and not p.requires_grad and p.grad is None and p not in opt.state
    assert opt.probes == []
    for j, (_, q) in enumerate(candidates(model)):  # the selected tensors were updated as usual
        assert (not torch.equal(q.detach(), before[j])) == bool(opt.selected[j])
    check_flags(model, opt)
    opt.zero_grad(set_to_none=True)
    engine_step(model, opt, xs[3])  # step 4: the next probe is armed
    assert len(opt.probes) == 1
    check_flags(model, opt)


def run(step_fn, xs, log=None, **hp):
    model = Tiny()
    opt = BlockLLM(model.named_parameters(), **hp)
    for x in xs:
        step_fn(model, opt, x)
        check_flags(model, opt)
        if log is not None:  # what was armed, and the norms known, after each step
            log.append((list(opt.probes), opt.grad_norms.clone()))
    return model, opt


def assert_same_run(a, b):
    (ma, oa), (mb, ob) = a, b
    for (n, p), q in zip(ma.named_parameters(), mb.parameters()):
        assert torch.equal(p, q) and p.requires_grad == q.requires_grad, n
    assert oa.probes == ob.probes and oa.num_selections == ob.num_selections
    for key in ("selected", "visits", "grad_norms"):
        assert torch.equal(getattr(oa, key), getattr(ob, key)), key
    assert oa.loss_history == ob.loss_history
    assert torch.equal(oa.generator.get_state(), ob.generator.get_state())
    for p, q in zip(oa._params, ob._params):
        assert (p in oa.state) == (q in ob.state)
        if p in oa.state:
            sa, sb = oa.state[p], ob.state[q]
            assert sa["step"] == sb["step"]
            assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


# re-selection checked every 2 steps: probes are armed after some of them, from the new unselected pool
HP = dict(sparsity=0.7, param_update_interval=2, update_freq=2, patience=1, num_bottom_to_sample=2)


def test_closure_with_backward_equals_backward_outside_step():
    xs = batches(8)
    log_e, log_c = [], []
    engine, closure = run(engine_step, xs, log_e, **HP), run(closure_step, xs, log_c, **HP)
    assert_same_run(engine, closure)
    assert [a for a, _ in log_e] == [a for a, _ in log_c]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(log_e, log_c))
    assert engine[1].num_selections >= 2  # re-selections fall on even steps: probes are armed right after them
    assert [len(a) for a, _ in log_e] == [0, 2] * 4  # armed after steps 2, 4, 6, 8 (the last still armed)
    for k in (1, 3, 5):  # the probes armed after step k+1 were measured in step k+2
        probes, (_, before), (_, after) = log_e[k][0], log_e[k], log_e[k + 1]
        assert all(not math.isnan(after[i].item()) and after[i] != before[i] for i in probes)


@pytest.mark.parametrize("step_fn", [engine_step, closure_step])
def test_resume_with_armed_probe_is_bit_exact(step_fn):
    xs = batches(10)
    ref = run(step_fn, xs, **HP)
    model, opt = run(step_fn, xs[:4], **HP)
    assert opt.probes  # saved between step 4 and 5, while a probe is armed
    ck = testing.save_and_load(model, opt)
    resumed = Tiny()
    with torch.no_grad():
        for p in resumed.parameters():
            p.add_(1.0)  # only the checkpoint can make it equal
    resumed_opt = BlockLLM(resumed.named_parameters(), **HP)
    resumed.load_state_dict(ck["model"])
    resumed_opt.load_state_dict(ck["optimizer"])
    assert resumed_opt.probes == opt.probes
    assert [p.requires_grad for p in resumed.parameters()] == [p.requires_grad for p in model.parameters()]
    check_flags(resumed, resumed_opt)
    for x in xs[4:]:
        step_fn(resumed, resumed_opt, x)
    assert_same_run(ref, (resumed, resumed_opt))


@pytest.mark.parametrize("sparsity", [0.7, 0.03])  # 0.03: all candidates but one selected, so the probe
def test_state_bytes_formula_is_exact_while_a_probe_is_armed(sparsity):  # makes every candidate trainable
    from memopt.memory import optimizer_state_bytes
    from memopt.optim import build, expected_state_bytes
    model = Tiny()
    hp = dict(sparsity=sparsity, param_update_interval=2)
    opt = build("blockllm", model, **hp)
    for x in batches(2):
        engine_step(model, opt, x)
    assert opt.probes and all(candidates(model)[i][1].requires_grad for i in opt.probes)
    if sparsity == 0.03:
        assert int((~opt.selected).sum()) == 1 and all(p.requires_grad for _, p in candidates(model))
    assert optimizer_state_bytes(opt) == expected_state_bytes("blockllm", model, **hp)
    engine_step(model, opt, batches(1, seed=9)[0])  # read out, nothing armed
    assert not opt.probes and optimizer_state_bytes(opt) == expected_state_bytes("blockllm", model, **hp)


def test_outer_scheduler_lr_is_applied():
    model = Tiny()
    opt = BlockLLM(model.named_parameters(), lr=0.01, sparsity=0.7)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.25 if s == 0 else 0.5)
    before = [p.detach().clone() for _, p in candidates(model)]
    opt.step(make_closure(model, opt, torch.Generator().manual_seed(7)))
    sched.step()
    for (n, p), b, on in zip(candidates(model), before, opt.selected.tolist()):
        if on:  # Adam's first step moves every element by lr * g/|g| (|g| >> eps here)
            delta = (p.detach() - b).abs()
            moved = delta > 0
            assert moved.any()
            torch.testing.assert_close(delta[moved], torch.full_like(delta[moved], 0.0025), rtol=1e-3, atol=0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)


def test_selects_at_construction_when_gradients_exist():
    model = Tiny()
    for p in model.parameters():
        p.grad = torch.ones_like(p) * p.numel()
    opt = BlockLLM(model.named_parameters(), sparsity=0.8)
    assert not opt.selection_pending and opt.num_selections == 1
    assert sum(p.requires_grad for p in model.parameters()) == int(opt.selected.sum())


def test_step_without_closure_is_an_error():
    model = Tiny()
    opt = BlockLLM(model.named_parameters())
    with pytest.raises(ValueError, match="closure"):
        opt.step()


@pytest.mark.parametrize("kwargs, match", [
    ({"sparsity": 1.0}, "0 <= sparsity < 1"), ({"lr": 0.0}, "lr"), ({"update_freq": 0}, "update_freq"),
    ({"patience": 0}, "patience"), ({"param_update_interval": 0}, "param_update_interval"),
    ({"betas": (0.9, 1.0)}, "betas"), ({"num_bottom_to_sample": -1}, "num_bottom_to_sample"),
])
def test_bad_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockLLM(Tiny().named_parameters(), **kwargs)


def test_frozen_patterns_default_is_the_authors():
    from memopt.optim import hyperparameters
    assert hyperparameters("blockllm")["frozen_patterns"] == ("embed", "lm_head")
    model = Tiny()
    opt = BlockLLM(model.named_parameters(), sparsity=0.0)
    assert opt.frozen_names == ["embed.weight", "lm_head.weight"]
    assert not model.embed.weight.requires_grad and not model.lm_head.weight.requires_grad


def test_empty_frozen_patterns_makes_embeddings_candidates_and_trains_them():
    from memopt.memory import optimizer_state_bytes
    from memopt.optim import build, expected_state_bytes
    model = Tiny()
    embed0, head0 = model.embed.weight.detach().clone(), model.lm_head.weight.detach().clone()
    opt = build("blockllm", model, lr=0.01, sparsity=0.0, frozen_patterns=())
    assert opt.frozen_names == [] and "embed.weight" in opt.names and "lm_head.weight" in opt.names
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        opt.step(make_closure(model, opt, gen))
    assert not torch.equal(model.embed.weight, embed0) and not torch.equal(model.lm_head.weight, head0)
    assert optimizer_state_bytes(opt) == expected_state_bytes("blockllm", model, sparsity=0.0, frozen_patterns=())
    # with a budget below everything, the selection may now pick the embedding like any other tensor
    model2 = Tiny()
    for p in model2.parameters():
        p.grad = torch.zeros_like(p)
    model2.embed.weight.grad = torch.ones_like(model2.embed.weight)  # by far the largest norm
    opt2 = BlockLLM(model2.named_parameters(), sparsity=0.7, frozen_patterns=[])
    assert opt2.selected[opt2.names.index("embed.weight")] and model2.embed.weight.requires_grad


@pytest.mark.parametrize("bad", ["embed", ("embed", 3), ("",)])
def test_frozen_patterns_checked(bad):
    with pytest.raises(ValueError, match="frozen_patterns"):
        BlockLLM(Tiny().named_parameters(), frozen_patterns=bad)


def test_rejects_a_foreign_state_dict():
    model = Tiny()
    opt = BlockLLM(model.named_parameters())
    adam = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="blockllm"):
        opt.load_state_dict(adam.state_dict())
