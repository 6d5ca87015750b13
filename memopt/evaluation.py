"""Validation loss, perplexity and answer accuracy."""
from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memopt.data import extract_answer, normalize_answer, prompt_for
from memopt.loss import CausalLMLoss


@torch.no_grad()
def validation_loss(model: PreTrainedModel, blocks: torch.Tensor, batch_size: int, max_batches: int | None = None) -> float:
    """Mean next-token loss over the blocks (every block weighs the same)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_of = CausalLMLoss(model)  # the training loss, computed the same way
    losses = []
    for i, start in enumerate(range(0, len(blocks), batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        batch = blocks[start : start + batch_size].to(device)
        losses.append(loss_of(batch).float().item() * len(batch))
    model.train(was_training)
    n = min(len(blocks), batch_size * max_batches) if max_batches else len(blocks)
    return sum(losses) / n


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 80.0))  # exp(80) already means "no model"; avoid overflow


@torch.no_grad()
def answer_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[dict],
    max_new_tokens: int = 64,
    batch_size: int = 32,
) -> float | None:
    """Greedy generation on held-out problems; exact match of the final boxed answer.

    Prompts go in left-padded batches, so generation costs max_new_tokens forward passes per batch
    rather than per problem."""
    if not problems:
        return None
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # a decoder-only model continues from the last position
    device = next(model.parameters()).device
    correct = 0
    try:
        for start in range(0, len(problems), batch_size):
            rows = problems[start : start + batch_size]
            prompts = tokenizer([prompt_for(r["problem"]) for r in rows], return_tensors="pt", padding=True).to(device)
            out = model.generate(
                **prompts,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(out[:, prompts["input_ids"].shape[1] :], skip_special_tokens=True)
            for row, text in zip(rows, texts):
                predicted = extract_answer(text)
                correct += predicted is not None and normalize_answer(predicted) == normalize_answer(str(row["answer"]))
    finally:
        model.train(was_training)
        tokenizer.padding_side = padding_side
    return correct / len(problems)
