"""Workload features of one experiment: what the calibration's coefficients multiply (trainables.driver.plan).

Nothing here allocates a model or imports torch. A model's shape comes from its config (the checkpoint's
config.json when it is on disk or in the Hugging Face cache, else the family's known dimensions of the real
checkpoint); the family's shapes module (trainables.trial.families.shapes_of) turns the shape and the experiment's
lengths, beams and gradient checkpointing into bytes and work of one training micro-batch and one generation batch.
What every family shares is counted here: weights as loaded (4-bit stack or not), LoRA parameters with their
gradients and Adam state, linear-layer calls (base, LoRA, 4-bit dequantization, recompute), and the fast
evaluation's merged half-precision copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from trainables.config import ExperimentConfig
from trainables.trial.families import shapes_of
from trainables.trial.families.shapes import ModelDims

GIB = 2**30
NF4_BYTES = 0.53  # bytes per 4-bit weight: NF4 with double-quantized block scales


@dataclass
class Features:
    """What the calibration's coefficients multiply (trainables.driver.calibration). Bytes as GiB."""

    static_gib: float  # weights as loaded (4-bit stack or not) + LoRA params with grads and Adam state
    act_gib: float  # saved activations of one training micro-batch (with gradient checkpointing: the checkpoints)
    logit_gib: float  # the training logits: micro-batch x positions x vocab, 4 bytes each
    gen_gib: float  # generation of one eval batch: KV caches, expanded encoder states, beams' logits
    merged_gib: float  # the fast evaluation's merged bf16 copy beside the training model (0 without one)
    module_calls: float  # linear-layer calls per training micro-batch (base + LoRA + 4-bit dequant, x recompute)
    tflop: float  # FLOPs of one training micro-batch, in 1e12
    gen_calls: float  # linear-layer calls per generated token x generated tokens, per eval batch
    gen_tb: float  # bytes read from GPU memory per eval batch (weights + KV caches per generated token), in 1e12
    params: int
    trainable: int


def config_json(checkpoint: str, model_path: str | None = None) -> tuple[dict[str, Any], str] | None:
    """The checkpoint's config.json from a folder or the local Hugging Face cache; never the network."""
    for folder in (model_path, checkpoint):
        if folder and (Path(folder) / "config.json").is_file():
            return json.loads((Path(folder) / "config.json").read_text()), f"{folder}/config.json"
    if "/" in checkpoint and not Path(checkpoint).exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(checkpoint, "config.json")
        except Exception:  # an odd id or cache layout: fall back to the known dimensions
            cached = None
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text()), f"cached {checkpoint}/config.json"
    return None


def model_dims(arch: str, checkpoint: str, model_path: str | None = None) -> ModelDims:
    """The model's shape from its config.json when on disk, else the real checkpoint's known dimensions."""
    shapes = shapes_of(arch)
    found = config_json(checkpoint, model_path)
    if found:
        try:
            return shapes.dims(arch, *found)
        except KeyError:
            pass  # not the family's config: use the known dimensions
    return shapes.dims(arch, None, "")


def parameter_count(d: ModelDims) -> int:
    return shapes_of(d.arch).parameter_count(d)


def lora_params(d: ModelDims, targets: Iterable[str], rank: int) -> tuple[int, int]:
    """(LoRA parameters, LoRA-wrapped stack modules)."""
    targets = set(targets)
    rank = min(rank, d.hidden)
    mods = shapes_of(d.arch).linear_modules(d)
    params = sum(rank * (i + o) * c for n, i, o, c, _ in mods if n in targets)
    calls = sum(c for n, _, _, c, _ in mods if n in targets)
    if "lm_head" in targets:
        params += rank * (d.hidden + d.vocab)
    if targets & {"embed_tokens", "shared"}:
        params += rank * (d.hidden + d.vocab)
    return params, calls


def features(exp: ExperimentConfig, d: ModelDims, load_in_4bit: bool | None = None, batch: int | None = None,
             merged: bool | None = None) -> Features:
    """`load_in_4bit`, `batch` (the training micro-batch): what a run really did or will do, where it differs from
    the config (the speed plan's larger micro-batch, an OOM back-off). `merged`: whether generation runs from the
    fast evaluation's merged bf16 copy (None: where the config turns it on; the plan says False where the copy does
    not fit beside the training model, placement.merged_copy_fits)."""
    shapes = shapes_of(d.arch)
    t, q = exp.training, exp.qlora
    four_bit = (q.use_qlora and q.load_in_4bit) if load_in_4bit is None else load_in_4bit
    cost = shapes.cost(d, exp, batch or t.per_device_train_batch_size, four_bit)
    mods = shapes.linear_modules(d)
    stack = sum(i * o * c for _, i, o, c, _ in mods)
    params = shapes.parameter_count(d)
    unquantized = shapes.weight_bytes(four_bit)  # bytes of every weight outside 4-bit layers
    weights = stack * (NF4_BYTES if four_bit else unquantized) + (params - stack) * unquantized
    trainable, lora_calls = lora_params(d, q.target_modules, q.lora_rank) if q.use_qlora else (params, 0)
    n_stack = sum(c for *_, c, _ in mods)
    calls = (n_stack + 1) * (3 if t.gradient_checkpointing else 2) + lora_calls * 3 + (n_stack * 2 if four_bit else 0)
    if merged is None:
        merged = exp.speed.enabled and exp.speed.fast_eval
    # the merged copy: no 4-bit dequantization, no LoRA branch, bf16 weights read per generated token
    gen_weights = params * 2 if merged else weights
    return Features(
        static_gib=(weights + trainable * 12) / GIB,  # + gradient and two Adam moments (fp32)
        act_gib=cost.act_bytes / GIB, logit_gib=cost.logit_bytes / GIB, gen_gib=cost.gen_bytes / GIB,
        merged_gib=params * 2 / GIB if merged else 0.0, module_calls=calls, tflop=cost.tflop,
        gen_calls=cost.gen_calls_per_token * cost.gen_tokens * (2 if four_bit and not merged else 1),
        gen_tb=cost.gen_tokens * (gen_weights + cost.kv_bytes / 2) / 1e12, params=params, trainable=trainable,
    )
