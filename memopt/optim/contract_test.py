"""The contract every registered optimizer meets (memopt.optim.optim_db), beyond the round trip
(checkpoint_test.py) and the state bytes (memopt/memory_test.py)."""
from dataclasses import fields

import pytest
import torch

from memopt import optim
from memopt.methods import run_hyperparameters
from memopt.optim.optim_db import LEARN_STEPS, OPTIM_DB, TINY_MODEL, tiny_model
from memopt.optim.reparam import merged_state_dict
from memopt.optim.testing import engine_step, next_token_loss, pattern_batch, run_pattern

VOCAB = TINY_MODEL["vocab_size"]
ENTRIES = [pytest.param(i, id=i.name) for i in OPTIM_DB]
INVALID = [pytest.param(i.name, {**i.samples[0], **bad}, arg, id=f"{i.name}-{arg}-{n}")
           for i in OPTIM_DB for n, (bad, arg) in enumerate(i.invalid)]


def named_argument(arg: str) -> str:
    """The message shape of memopt.optim.checks, `invalid <name>: ...` (betas[0] names betas)."""
    return rf"^invalid {arg}(\[\d+\])?: "


def test_every_registered_method_has_one_entry():
    names = [i.name for i in OPTIM_DB]
    assert sorted(names) == sorted(optim.methods()), "a method without a contract entry (or an entry without a method)"
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("entry", ENTRIES)
def test_samples_are_valid_hyperparameters(entry):
    for sample in (*entry.samples, entry.learn_hyperparameters(), *(bad for bad, _ in entry.invalid)):
        optim.hyperparameters(entry.name, **sample)  # no unknown key, or a sample tests nothing


@pytest.mark.parametrize("name, hp, arg", INVALID)
def test_invalid_hyperparameter_names_the_argument(name, hp, arg):
    with pytest.raises(ValueError, match=named_argument(arg)):
        optim.build(name, tiny_model(), **hp)


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_declared_hyperparameter_is_checked(entry):
    # a value of no sensible type, for each field in turn: the config must say which one is wrong
    base = {**run_hyperparameters(entry.name, LEARN_STEPS, 1), **entry.samples[0]}
    for f in fields(optim.spec(entry.name).config):
        with pytest.raises(ValueError, match=named_argument(f.name)):
            optim.method_config(entry.name, **{**base, f.name: object()})


@pytest.mark.parametrize("entry", ENTRIES)
def test_unknown_hyperparameter_lists_the_valid_ones(entry):
    with pytest.raises(ValueError, match=rf"method '{entry.name}' has no hyperparameter 'block_size'; valid: .*\blr\b"):
        optim.hyperparameters(entry.name, block_size=4)


@pytest.mark.parametrize("entry", ENTRIES)
def test_declared_defaults_are_valid_once_the_run_facts_are_given(entry):
    s = optim.spec(entry.name)
    assert s.defaults == {f.name: f.default for f in fields(s.config)}  # the plain dict other code reads
    facts = run_hyperparameters(entry.name, LEARN_STEPS, 1)
    assert optim.method_config(entry.name, **facts).as_dict() == {**s.defaults, **facts}


@pytest.mark.parametrize("entry", ENTRIES)
def test_learns_a_learnable_sequence(entry):
    model = tiny_model()
    opt = optim.build(entry.name, model, **entry.learn_hyperparameters())
    held_out = pattern_batch(10_000, VOCAB)
    with torch.no_grad():
        start = next_token_loss(model, held_out).item()
    run_pattern(model, opt, range(LEARN_STEPS), VOCAB)
    with torch.no_grad():
        end = next_token_loss(model, held_out).item()
    assert end < 0.5 * start, f"{entry.name}: held-out loss {start:.3f} -> {end:.3f} in {LEARN_STEPS} steps"


@pytest.mark.parametrize("entry", ENTRIES)
def test_default_build_steps_or_names_what_does_not_fit(entry):
    model = tiny_model()
    facts = run_hyperparameters(entry.name, LEARN_STEPS, 1)  # the only values the engine adds to the defaults
    if entry.default_build is not None:
        with pytest.raises(ValueError, match=named_argument(entry.default_build)):
            optim.build(entry.name, model, **facts)
        return
    before = [p.detach().clone() for p in model.parameters()]
    opt = optim.build(entry.name, model, **facts)
    losses = run_pattern(model, opt, range(2), VOCAB)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("entry", ENTRIES)
def test_flags_on_the_spec_say_what_the_method_does(entry):
    spec = optim.spec(entry.name)
    model = tiny_model()
    keys = {k: v.shape for k, v in model.state_dict().items()}
    opt = optim.build(entry.name, model, **entry.samples[0])

    # reparameterizes: modules swapped, and merged_state_dict gives back the dense model's keys and function
    assert ({k: v.shape for k, v in model.state_dict().items()} != keys) == spec.reparameterizes
    if spec.reparameterizes:
        dense = tiny_model(seed=1)
        dense.load_state_dict(merged_state_dict(model))  # strict: the dense architecture's keys and shapes
        x = pattern_batch(0, VOCAB)
        torch.testing.assert_close(dense(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)

    # steps_in_backward: the update runs in backward and leaves no gradient behind
    before = [p.detach().clone() for p in model.parameters()]
    loss = next_token_loss(model, pattern_batch(0, VOCAB))
    loss.backward()
    moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert moved == spec.steps_in_backward
    assert all(p.grad is None for p in model.parameters()) == spec.steps_in_backward

    # needs_closure: step() without one is refused; every other method steps without it
    if spec.needs_closure:
        with pytest.raises(ValueError, match="closure"):
            opt.step()
    else:
        opt.step()
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.zero_grad(set_to_none=True)
    engine_step(opt, next_token_loss(model, pattern_batch(1, VOCAB)))  # and the engine's step works either way
