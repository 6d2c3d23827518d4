"""The merged half-precision copy the fast evaluation generates from: a plain transformers model (no peft, no
4-bit) of the training model's own class, with the 4-bit base dequantized and the LoRA deltas and trained token
rows merged in, in the run's precision. Checked against the training model's logits (merge_error) before use.

Family-independent: the copy is built from the base model's own class and config, so any family's model works.
peft's and bitsandbytes' internals are reached through trainables.compat.
"""

from __future__ import annotations

from typing import Any

from trainables import compat

# Largest relative difference between the training model's logits and its merged copy's that still counts
# as the same model (bf16 rounding of merged weights is ~1e-2; a wrong merge is ~1).
MERGE_TOLERANCE = 0.08


def generation_dtype(precision: str, device):
    """The copy's dtype: the run's half precision on a GPU, fp32 on the CPU."""
    import torch

    if getattr(device, "type", str(device)) == "cpu":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def _lora_weight(module, params: dict[str, Any]):
    weight = params["weight"]
    for adapter in module.active_adapters:
        if adapter in getattr(module, "lora_A", {}) or adapter in getattr(module, "lora_embedding_A", {}):
            weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
        if getattr(module, "lora_bias", {}).get(adapter):
            raise NotImplementedError("LoRA bias")
    return weight


def effective_params(module) -> dict[str, Any]:
    """This module's own parameters as the training model uses them: 4-bit weights dequantized, LoRA deltas
    and trainable-token rows merged in."""
    if compat.is_trainable_tokens_layer(module):
        layer = module.token_adapter
        base = dict(effective_params(layer.base_layer))
        base["weight"] = layer.get_merged_weights(layer.active_adapters)
        return base
    if compat.is_lora_layer(module):
        params = dict(effective_params(module.get_base_layer()))
        params["weight"] = _lora_weight(module, params)
        return params
    return {name: compat.dequantized_weight(param) if compat.is_4bit_param(param) else param.data
            for name, param in module.named_parameters(recurse=False)}


def _empty_like(base):
    """An empty (meta-device) model of `base`'s own class and config, without its quantization config."""
    import copy

    import torch

    config = copy.deepcopy(base.config)
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        return type(base)(config)


def _fill_parameters(new, base, device, dtype) -> None:
    """Every parameter of `new` from the module of `base` at the same path; one Parameter per source module, so
    weights are tied in the copy only where the training model shares them."""
    import torch

    made: dict[int, dict[str, torch.nn.Parameter]] = {}
    for name, mod in new.named_modules(remove_duplicate=False):
        own = [n for n, _ in mod.named_parameters(recurse=False)]
        if not own:
            continue
        src = base.get_submodule(name) if name else base
        if id(src) not in made:
            made[id(src)] = {n: torch.nn.Parameter(t.to(device=device, dtype=dtype), requires_grad=False)
                             for n, t in effective_params(src).items()}
        for n in own:
            if n not in made[id(src)]:
                raise RuntimeError(f"no source for {name}.{n}")
            setattr(mod, n, made[id(src)][n])


def _fill_buffers(new, base, device, dtype) -> None:
    for name, _ in list(new.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        src = base.get_submodule(owner) if owner else base
        if hasattr(src, "get_base_layer"):
            src = src.get_base_layer()
        value = src.get_buffer(leaf)
        target = new.get_submodule(owner) if owner else new
        target.register_buffer(leaf, value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype))


def merged_copy(model, precision: str):
    """A plain transformers model (no peft, no 4-bit) computing what `model` computes, in the run's precision."""
    import copy

    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    dtype = generation_dtype(precision, device)
    new = _empty_like(base)
    with torch.no_grad():
        _fill_parameters(new, base, device, dtype)
        _fill_buffers(new, base, device, dtype)
    left = [n for n, t in [*new.named_parameters(), *new.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"merged copy incomplete: {left[:3]}")
    new.generation_config = copy.deepcopy(model.generation_config)
    new.eval()
    return new


def merge_error(model, copy_, batch) -> float:
    """Relative difference of the two models' teacher-forced logits on `batch` (input_ids, attention_mask, labels)."""
    import torch

    with torch.no_grad():
        a = model(**batch).logits.float()
        b = copy_(**batch).logits.float()
    return float((a - b).norm() / a.norm().clamp_min(1e-12))
