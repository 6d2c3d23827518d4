"""Attention without cuDNN (speed `no_cudnn_attention`): scaled-dot-product attention may use flash,
memory-efficient or math kernels, not cuDNN's. With torch 2.11 on an H100, SDPA picked cuDNN for bf16/fp16 and
each call spent ~7 ms of CPU building a graph for the new shape (every batch in training, every decoding step in
generation): 70-80% of the CPU time of a step (BENCHMARKS.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainables.trial.speed.records import SpeedPlan


def attention_backends(p: "SpeedPlan"):
    """A context manager for the trial's training and evaluation: SDPA without cuDNN where the plan says so (torch's
    own choice otherwise); flags restored on exit, so an in-process caller (a benchmark's next run) is unaffected."""
    return sdpa_without_cudnn(p.no_cudnn_attention)


def sdpa_without_cudnn(on: bool):
    """torch's SDPA limited to its flash, memory-efficient and math kernels while the context is open (`on`), else
    nothing changed. One switch for training, evaluation and predict."""
    import contextlib

    if not on:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
