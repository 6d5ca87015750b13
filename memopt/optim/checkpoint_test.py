"""Save model + optimizer mid-run, load into fresh ones with weights_only=True, continue: bit-equal to no break."""
import pytest
import torch
from torch import nn

from memopt.models import build_model
from memopt.optim import build

VOCAB = 64
STEPS, SAVE_AT = 7, 3  # the resumed part (steps 3..6) crosses two projector refreshes / re-selections


def micro(seed):
    return build_model("llama-micro", vocab_size=VOCAB, max_position_embeddings=16, seed=seed)


def run(model, opt, batches):
    for x in batches:
        def closure():
            opt.zero_grad()
            logits = model(x).logits
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), torch.roll(x, -1, 1).flatten())
            loss.backward()
            return loss
        opt.step(closure)


CASES = [
    ("adamw", {"weight_decay": 0.1}),
    ("adamw", {"weight_decay": 0.1, "fused": True}),
    ("galore", {"rank": 4, "update_proj_gap": 2, "weight_decay": 0.1}),  # SVDs at 0, 2, 4, 6; saved after 3
    ("galore", {"rank": 4, "update_proj_gap": 2, "proj_type": "full", "reset_state_on_refresh": True}),
    ("galore", {"rank": 4, "update_proj_gap": 2, "svd": "randomized"}),  # seeded from the step: no RNG state to save
    ("blockllm", {"sparsity": 0.8, "update_freq": 2, "patience": 1, "param_update_interval": 2}),
]


@pytest.mark.parametrize("name, hp", CASES)
def test_round_trip_is_bit_exact(tmp_path, name, hp):
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, VOCAB, (2, 8), generator=gen) for _ in range(STEPS)]

    ref = micro(0)
    ref_opt = build(name, ref, **hp)
    run(ref, ref_opt, batches)

    first = micro(0)
    opt = build(name, first, **hp)
    run(first, opt, batches[:SAVE_AT])
    torch.save({"model": first.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ck.pt")

    resumed = micro(1)  # different init: only the checkpoint can make it equal
    resumed_opt = build(name, resumed, **hp)
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    resumed.load_state_dict(ck["model"])
    resumed_opt.load_state_dict(ck["optimizer"])
    if name == "blockllm":  # flags follow the loaded selection before any step
        assert [p.requires_grad for p in resumed.parameters()] == [p.requires_grad for p in first.parameters()]
    run(resumed, resumed_opt, batches[SAVE_AT:])

    for (n, a), b in zip(ref.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n
    moved = [not torch.equal(a, b) for a, b in zip(ref.parameters(), micro(0).parameters())]
    assert any(moved)
    if name == "blockllm":
        assert ref_opt.num_selections >= 2  # a re-selection happened in the run
        assert [p.requires_grad for p in ref.parameters()] == [p.requires_grad for p in resumed.parameters()]
        assert torch.equal(ref_opt.visits, resumed_opt.visits)
        assert torch.equal(ref_opt.grad_norms, resumed_opt.grad_norms)


def test_blockllm_rejects_a_foreign_state_dict():
    model = micro(0)
    opt = build("blockllm", model)
    adam = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="blockllm"):
        opt.load_state_dict(adam.state_dict())
