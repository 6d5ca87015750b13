"""muon: torch.optim.Muon on exactly the hidden 2-D weights and torch.optim.AdamW on the rest, bit for bit the
two optimizers torch's documentation describes, and one LR schedule reaching both, also after a resume."""
import torch

from memopt import optim
from memopt.optim.optim_db import TINY_MODEL, tiny_model
from memopt.optim.targets import split_params
from memopt.optim.testing import run_pattern, save_and_load

VOCAB = TINY_MODEL["vocab_size"]


def test_is_torch_muon_on_hidden_weights_and_adamw_on_the_rest():
    ours, ref = tiny_model(), tiny_model()
    opt = optim.build("muon", ours, lr=1e-2, weight_decay=0.1)
    hidden, other = split_params(ref)
    assert {p.shape for p in hidden} == {(32, 32), (88, 32), (32, 88)}  # attention and MLP linears only
    assert all(p.dim() == 1 or "embed" in n or "lm_head" in n for n, p in ref.named_parameters()
               if all(p is not h for h in hidden))
    muon = torch.optim.Muon(hidden, lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(other, lr=1e-2, weight_decay=0.1)

    class Both(torch.optim.SGD):  # the documentation's two optimizers, stepped one after the other
        def step(self, closure=None):
            muon.step(), adamw.step()

    run_pattern(ours, opt, range(3), VOCAB)
    run_pattern(ref, Both(ref.parameters(), lr=0.0), range(3), VOCAB)
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name


def test_one_schedule_reaches_both_parts_after_a_resume_too():
    model = tiny_model()
    opt = optim.build("muon", model, lr=1e-2)
    run_pattern(model, opt, range(2), VOCAB)
    resumed = optim.build("muon", tiny_model(seed=1), lr=1e-2)
    resumed.load_state_dict(save_and_load(model, opt)["optimizer"])
    for o in (opt, resumed):
        schedule = torch.optim.lr_scheduler.LambdaLR(o, lambda step: 0.5)
        assert schedule.get_last_lr() == [5e-3] * len(o.param_groups)
        assert [g["lr"] for g in (*o.muon.param_groups, *o.adamw.param_groups)] == [5e-3] * len(o.param_groups)
