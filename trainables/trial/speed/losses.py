"""Cross-entropy over a large vocabulary without full-size fp32 copies of the logits (speed `chunked_loss`, OFF by
default).

`F.cross_entropy(logits.float(), ...)` on mT5's 250,112-token vocabulary keeps an fp32 copy of the logits, an
fp32 log-softmax for the backward pass and fp32 gradients: ~10 GB at micro-batch 18 x 128 label tokens. Here the
loss is computed in fp32 one chunk of rows at a time (log-sum-exp and the target's logit); the backward pass keeps
only the logits (alive anyway), the labels and one fp32 log-sum-exp per row, recomputes the softmax chunk by chunk
and writes the gradient in the logits' own dtype. No tensor larger than one chunk is ever made in fp32. Same loss
and gradients as the plain computation to float rounding (tests/test_losses.py states the bounds).

Why off by default: measured on an H100 it did not lower the mT5 configs' training peak (01_mt5_xlsum_ultimate
16.47 GiB at 4 x 4 against 16.6 with the plain loss): their activations at 512-1024 input tokens fill the 20 GiB
cap first, so the larger micro-batches it was meant to allow still step down (BENCHMARKS.md, "chunked
cross-entropy"). `speed: {chunked_loss: true}` turns it on; the plan sizes memory as for the plain loss either way.

Why our own: Liger-Kernel's and Unsloth's cross-entropy are Triton kernels (CUDA only: the CPU tests and CPU
trials could not run them), and Apple's cut-cross-entropy fuses the output projection into the loss, which needs
the hidden states and the lm_head weight, not the logits: it does not fit a 4-bit model with LoRA on its tied
lm_head through the Trainer's `compute_loss_func`. The arithmetic below is ~40 lines of plain torch.

The recipe's token-mean loss (trainables.trial.recipe.token_mean_loss, a correctness fix that is not part of this
layer) takes its summed cross-entropy from `trainer_cross_entropy`; the fast evaluation's dev loss from
`token_cross_entropy`. torch is imported lazily.
"""

from __future__ import annotations

import functools

IGNORE_INDEX = -100
# fp32 bytes of one chunk of rows (rows = CHUNK_BYTES // (vocab x 4)): 268 rows of mT5's vocabulary. A chunk's
# work has at most two such tensors alive at once (its fp32 upcast, and logsumexp's shifted exponentials or the
# backward's softmax).
CHUNK_BYTES = 256 * 2**20


def chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (vocab * 4))


def _token_losses(flat, labels, rows: int):
    """(per-row fp32 log-sum-exp, per-row loss with ignored rows 0) of `flat` (N, V) in its own dtype."""
    import torch

    n = flat.shape[0]
    lse = torch.empty(n, dtype=torch.float32, device=flat.device)
    loss = torch.empty(n, dtype=torch.float32, device=flat.device)
    for s in range(0, n, rows):
        x = flat[s:s + rows].float()
        y = labels[s:s + rows]
        lse_c = torch.logsumexp(x, dim=-1)
        target = x.gather(1, y.clamp_min(0).unsqueeze(1)).squeeze(1)
        lse[s:s + rows] = lse_c
        loss[s:s + rows] = torch.where(y != IGNORE_INDEX, lse_c - target, 0.0)
        del x
    return lse, loss


@functools.cache
def _function():
    import torch
    from torch.autograd.function import once_differentiable

    class ChunkedCrossEntropy(torch.autograd.Function):
        """Summed cross-entropy of logits (..., V) in any float dtype against labels (...) with -100 ignored."""

        @staticmethod
        def forward(ctx, logits, labels, rows):
            flat, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
            lse, loss = _token_losses(flat, flat_labels, rows)
            ctx.save_for_backward(logits, labels, lse)
            ctx.rows = rows
            return loss.sum()

        @staticmethod
        @once_differentiable
        def backward(ctx, grad_output):
            logits, labels, lse = ctx.saved_tensors
            rows = ctx.rows
            flat, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
            grad = torch.empty_like(flat)
            for s in range(0, flat.shape[0], rows):
                y = flat_labels[s:s + rows]
                valid = (y != IGNORE_INDEX).unsqueeze(1).float()
                p = flat[s:s + rows].float() - lse[s:s + rows, None]  # a new tensor even for fp32 logits
                p.exp_()  # softmax
                # minus the one-hot target on valid rows (scatter, not nonzero(): that would sync with the GPU)
                p.scatter_add_(1, y.clamp_min(0).unsqueeze(1), -valid)
                p.mul_(valid * grad_output.float())  # scaled; ignored rows get no gradient
                grad[s:s + rows] = p  # cast to the logits' dtype
                del p
            return grad.view_as(logits), None, None

    return ChunkedCrossEntropy


def chunked_cross_entropy(logits, labels, rows: int | None = None):
    """Summed cross-entropy (fp32 scalar) of `logits` (..., V) against `labels` (...), -100 ignored; what
    `F.cross_entropy(logits.float().reshape(-1, V), labels.reshape(-1), reduction="sum")` gives, computed in fp32
    `rows` rows at a time (default: chunk_rows(V)), with the gradient in the logits' dtype."""
    return _function().apply(logits, labels.to(logits.device), rows or chunk_rows(logits.shape[-1]))


def trainer_cross_entropy(p):
    """The summed cross-entropy the recipe's token-mean loss is to use under plan `p`: chunked_cross_entropy where
    `chunked_loss` is on, else None (the recipe's plain F.cross_entropy)."""
    return chunked_cross_entropy if p.chunked_loss else None


def token_cross_entropy(logits, labels, rows: int | None = None, chunked: bool = True):
    """Per-token fp32 cross-entropy (shape of `labels`, 0 where ignored), no autograd: the dev loss. Chunked, or
    (`chunked=False`) the plain `F.cross_entropy` on an fp32 copy of the logits."""
    import torch

    labels = labels.to(logits.device)
    with torch.no_grad():
        if not chunked:
            return torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels,
                                                     ignore_index=IGNORE_INDEX, reduction="none")
        flat = logits.reshape(-1, logits.shape[-1])
        _, loss = _token_losses(flat, labels.reshape(-1), rows or chunk_rows(logits.shape[-1]))
    return loss.view(labels.shape)
