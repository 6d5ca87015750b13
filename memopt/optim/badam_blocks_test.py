"""badam: one block trainable at a time, cycled as its switch mode says, the others untouched; and a random
order resumes bit for bit through a checkpoint with the engine's RNG state, across a reshuffle."""
import torch

from memopt import checkpoint, optim
from memopt.optim.optim_db import TINY_MODEL, tiny_model
from memopt.optim.testing import run_pattern, save_and_load

VOCAB = TINY_MODEL["vocab_size"]
ALL = dict(lr=1e-2, include_embedding=True, include_lm_head=True)  # 4 blocks: embeddings, layers 0 and 1, the rest


def trainable_names(model):
    return sorted({n.split(".")[2] if ".layers." in n else n.split(".")[-2] for n, p in model.named_parameters()
                   if p.requires_grad})


def test_one_block_at_a_time_in_descending_order_the_rest_untouched():
    model = tiny_model()
    opt = optim.build("badam", model, switch_block_every=2, **ALL)
    seen = [trainable_names(model)]
    for step in range(6):
        before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        run_pattern(model, opt, range(step, step + 1), VOCAB)
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
        seen.append(trainable_names(model))
    # the lm_head block ("rest": lm_head, final norm) first, then layer 1, layer 0, the embeddings; the first
    # block gets one step less (BAdam switches when (step + 1) % 2 == 0)
    rest, layer1, layer0, embed = ["lm_head", "norm"], ["1"], ["0"], ["embed_tokens"]
    assert seen == [rest, layer1, layer1, layer0, layer0, embed, embed]


def test_random_order_resumes_bit_for_bit_with_the_engines_rng_state():
    hp = dict(switch_block_every=1, switch_mode="random", **ALL)  # a reshuffle of the 4 blocks every 4 steps
    ref = tiny_model()
    ref_opt = optim.build("badam", ref, **hp)
    run_pattern(ref, ref_opt, range(3), VOCAB)
    ck, rng = save_and_load(ref, ref_opt), checkpoint.rng_state()
    run_pattern(ref, ref_opt, range(3, 9), VOCAB)

    resumed = tiny_model(seed=1)
    resumed_opt = optim.build("badam", resumed, **hp)
    resumed.load_state_dict(ck["model"])
    resumed_opt.load_state_dict(ck["optimizer"])
    checkpoint.set_rng_state(rng)  # last, as Trainer.load_state_dict does
    run_pattern(resumed, resumed_opt, range(3, 9), VOCAB)
    for (name, a), b in zip(ref.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
