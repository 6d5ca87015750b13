"""Every registered method's round trip (memopt.optim.optim_db): model + optimizer saved mid-run with
torch.save, loaded with torch.load(weights_only=True) into fresh ones built from a different init, resume
bit for bit, and the resumed part crosses each kind of the method's special events."""
import pytest
import torch

from memopt import optim
from memopt.optim.optim_db import SAVE_AT, STEPS, TINY_MODEL, info, sample_params, tiny_model
from memopt.optim.testing import run_pattern, save_and_load

VOCAB = TINY_MODEL["vocab_size"]


def flat(tree, prefix=""):
    """A state_dict as {path: leaf}, so two can be compared leaf by leaf."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}/").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in flat(sub, f"{prefix}{i}/").items()}
    return {prefix: tree}


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("name, hp", [pytest.param(n, hp, id=sid) for n, hp, sid in sample_params()])
def test_round_trip_resumes_bit_for_bit(name, hp):
    events = info(name).events
    ref = tiny_model(0)
    ref_opt = optim.build(name, ref, **hp)
    start = [p.detach().clone() for p in ref.parameters()]  # after the build: it may swap modules
    marks = run_pattern(ref, ref_opt, range(SAVE_AT), VOCAB, events)
    ck = save_and_load(ref, ref_opt)  # mid-run: the reference goes on from here untouched
    flags = [p.requires_grad for p in ref.parameters()]
    marks += run_pattern(ref, ref_opt, range(SAVE_AT, STEPS), VOCAB, events)

    resumed = tiny_model(1)  # a different init: only the checkpoint can make it equal
    resumed_opt = optim.build(name, resumed, **hp)
    resumed.load_state_dict(ck["model"])
    resumed_opt.load_state_dict(ck["optimizer"])
    # what the optimizer decides about the model (BlockLLM's requires_grad) follows the checkpoint at once
    assert [p.requires_grad for p in resumed.parameters()] == flags
    run_pattern(resumed, resumed_opt, range(SAVE_AT, STEPS), VOCAB)

    for (key, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
    assert any(not torch.equal(a, b) for a, b in zip(ref.parameters(), start))
    a, b = flat(ref_opt.state_dict()), flat(resumed_opt.state_dict())
    assert a.keys() == b.keys() and all(same(a[k], b[k]) for k in a), [k for k in a if not same(a[k], b.get(k))]
    if events is not None:  # each kind of event happens after the save (marks[SAVE_AT - 1]: at the save)
        after = marks[SAVE_AT - 1:]
        for kind in range(len(after[0])):
            assert len({m[kind] for m in after}) > 1, f"{name}: event kind {kind} does not happen after the save"
