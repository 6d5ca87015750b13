"""Next-token loss without materializing the whole vocabulary's logits.

A causal LM's loss is where a small model's training step peaks: for llama-60m at
batch 4 x seq 256 the fp32 logits are 4*256*32000*4 B = 125 MiB per copy, and
transformers' path holds several (logits, log-softmax, their gradients). The fused
linear cross-entropy here computes the loss chunk by chunk (`chunk_tokens` rows of
logits at a time) and, in the same pass, the gradients for the hidden states and the
output projection, so backward only scales them. Same FLOPs, no recompute; the
logits never exist for more than one chunk. Liger-Kernel does this in Triton for
CUDA only; this version is plain torch, for any device (why it is written here).

`CausalLMLoss(model)` wraps a transformers causal LM whose logits are
`hidden @ W.T` (a bias-free output projection, no logit scaling or soft-capping:
LLaMA, Qwen2, GPT-2) and returns the mean next-token loss, as
`model(input_ids=x, labels=x).loss` does, up to float summation order. Models it
cannot fuse go through transformers' own loss.
"""
from __future__ import annotations

import torch
from torch import nn

IGNORE_INDEX = -100  # transformers' label for "no loss here"
CHUNK_TOKENS = 256


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`; gradients computed in forward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int):
        device = hidden.device.type
        # Autocast would run the logits matmul in its low-precision dtype; do the same, explicitly.
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        # fp16 cannot hold gradients of size ~1/(tokens*vocab): those matmuls run in fp32.
        grad_dtype = torch.float32 if dtype == torch.float16 else dtype
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum().clamp(min=1)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        with torch.autocast(device, enabled=False):
            w = weight.to(dtype)
            w_grad = weight.to(grad_dtype)
            for start in range(0, hidden.shape[0], chunk_tokens):
                rows = slice(start, start + chunk_tokens)
                h, t, ok = hidden[rows].to(dtype), targets[rows], valid[rows]
                logits = (h @ w.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, t.clamp(min=0).unsqueeze(1)).squeeze(1)
                loss += torch.where(ok, lse - picked, 0.0).sum()
                if not (need_h or need_w):
                    continue
                # d loss / d logits = (softmax - onehot) / n_valid on counted rows, 0 elsewhere
                g = logits.sub_(lse.unsqueeze(1)).exp_()
                g.scatter_add_(1, t.clamp(min=0).unsqueeze(1), torch.full_like(lse, -1.0).unsqueeze(1))
                g.mul_((ok.float() / n_valid).unsqueeze(1))
                g = g.to(grad_dtype)
                if need_h:
                    grad_h[rows] = g @ w_grad
                if need_w:
                    grad_w += (g.t() @ h.to(grad_dtype)).float()
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(grad_h, grad_w)
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        # In place: these buffers belong to this graph alone (no retain_graph for a training loss).
        if grad_h is not None:
            grad_h.mul_(grad_loss)
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` (rows: tokens) against `targets` (-100: ignored)."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), chunk_tokens)


def fusable(model: nn.Module) -> bool:
    """Whether the model's logits are exactly `last_hidden_state @ lm_head.weight.T`."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    config = getattr(model, "config", None)
    return (
        isinstance(head, nn.Linear) and head.bias is None
        and getattr(config, "model_type", None) in ("llama", "qwen2", "gpt2")
        and not getattr(config, "final_logit_softcapping", None)
    )


class CausalLMLoss(nn.Module):
    """`forward(input_ids)` -> mean next-token loss of `model` on `input_ids` (labels = the inputs, shifted)."""

    def __init__(self, model: nn.Module, chunk_tokens: int = CHUNK_TOKENS) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.fused = fusable(model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return self.model(input_ids=input_ids, labels=input_ids).loss
        hidden = self.model.base_model(input_ids=input_ids).last_hidden_state
        targets = nn.functional.pad(input_ids[:, 1:], (0, 1), value=IGNORE_INDEX)  # the last position predicts nothing
        return linear_cross_entropy(hidden, self.model.get_output_embeddings().weight, targets, self.chunk_tokens)
