"""adalomo: the engine's backward is the whole step (the update at the param group's lr, the scheduler's);
a plain loss.backward() would not update the last tensor."""
import torch

from memopt import optim
from memopt.optim.optim_db import TINY_MODEL, tiny_model
from memopt.optim.testing import next_token_loss, pattern_batch

VOCAB = TINY_MODEL["vocab_size"]


def test_backward_updates_every_tensor_at_the_scheduled_lr_and_frees_the_gradients():
    model = tiny_model()
    opt = optim.build("adalomo", model, lr=5e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0 if step == 0 else 1.0)
    before = [p.detach().clone() for p in model.parameters()]
    optim.backward("adalomo", opt, next_token_loss(model, pattern_batch(0, VOCAB)))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # lr 0: nothing moves
    assert all(p.grad is None for p in model.parameters()) and opt.step_num == 1
    opt.step()
    schedule.step()
    optim.backward("adalomo", opt, next_token_loss(model, pattern_batch(1, VOCAB)))
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters()) and opt.step_num == 2


def test_a_plain_backward_leaves_the_last_tensor_behind():
    model = tiny_model()
    optim.build("adalomo", model, lr=5e-2)
    next_token_loss(model, pattern_batch(0, VOCAB)).backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == ["model.embed_tokens.weight"]
