"""galore-8bit against the authors' galore_torch.GaLoreAdamW8bit, which cannot run on a CPU as shipped (it calls
torch.cuda.synchronize() after each tensor): stubbed out here, it is the reference for the 8-bit update. Its
32-bit fallback for small moments does not move a projected weight at all on bitsandbytes 0.50: galore-torch
passes bitsandbytes' old positional arguments (percentile_clipping=100, block_wise=True), which 0.50 reads as
max_unorm=100 and skip_zeros=True, and max_unorm caps a 32-bit update at 100 x the norm of the tensor it
updates, the zeroed low-rank stand-in. That path is checked against memopt's GaLore instead."""
import warnings

import pytest
import torch

from memopt.optim.galore import GaLoreAdamW
from memopt.optim.galore_8bit import GaLoreAdamW8bit
from memopt.optim.testing import tall_wide_run

STEPS, GAP = 8, 3  # refreshes at steps 0, 3, 6


def _authors():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from galore_torch import GaLoreAdamW8bit as Authors  # test-only: the reference implementation
    return Authors


def relative_moves(ours, theirs, start):
    return [((a - b).norm() / (b - s).norm()).item() for a, b, s in zip(ours, theirs, start)]


@pytest.mark.parametrize("proj_type", ["std", "reverse_std"])
def test_8bit_moments_match_authors_galore_torch_8bit(proj_type, monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    # min_8bit_size 8: every low-rank moment of the tall 12x6 and wide 5x9 weights is 8-bit, the 7-vector 32-bit
    kw = dict(min_8bit_size=8, eps=1e-8)
    ours, opt = tall_wide_run(GaLoreAdamW8bit, proj_type, steps=STEPS, gap=GAP, wd=0.1, **kw)
    theirs, _ = tall_wide_run(_authors(), proj_type, steps=STEPS, gap=GAP, wd=0.1, **kw)
    start, _ = tall_wide_run(GaLoreAdamW8bit, proj_type, steps=0, gap=GAP, wd=0.1, **kw)
    assert sorted(str(s["state1"].dtype) for s in opt.state.values()) == ["torch.float32", "torch.uint8", "torch.uint8"]
    assert max(relative_moves(ours, theirs, start)) <= 1e-6


def test_32bit_fallback_is_galores_update():
    # bitsandbytes' Adam adds eps after the bias correction, GaLore's before (at eps 1e-8 the difference is below
    # 1e-5), and decays a full-size tensor before its update, GaLore after: no weight decay here
    kw = dict(eps=1e-8)
    ours, opt = tall_wide_run(GaLoreAdamW8bit, "std", steps=STEPS, gap=GAP, wd=0.0, min_8bit_size=10**6, **kw)
    reference, _ = tall_wide_run(GaLoreAdamW, "std", steps=STEPS, gap=GAP, wd=0.0, **kw)
    start, _ = tall_wide_run(GaLoreAdamW, "std", steps=0, gap=GAP, wd=0.0, **kw)
    assert {s["state1"].dtype for s in opt.state.values()} == {torch.float32}
    assert max(relative_moves(ours, reference, start)) <= 1e-5
