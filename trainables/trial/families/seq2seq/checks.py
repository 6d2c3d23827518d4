"""What the seq2seq family knows without loading anything (static: no torch): its architectures, the layer names
LoRA may target, and the checks `check` runs on a config before Ray starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainables.trial.families import FAMILIES

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig

T5_FAMILY = ("t5", "mt5")  # one group here: the same layers and LoRA names
ARCHITECTURES = frozenset({"t5", "mt5", "bart"})

# Linear layer names (last path component) in each architecture's model, as transformers names them.
LINEAR_NAMES = {
    "t5": {"q", "k", "v", "o", "wi_0", "wi_1", "wo", "lm_head"},
    "mt5": {"q", "k", "v", "o", "wi_0", "wi_1", "wo", "lm_head"},
    "bart": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "lm_head"},
}
# Embedding layer names that LoRA can also wrap.
EMBEDDING_NAMES = {"t5": {"shared", "embed_tokens"}, "mt5": {"shared", "embed_tokens"}, "bart": {"shared", "embed_tokens"}}


def lora_target_names(architecture: str) -> set[str]:
    return LINEAR_NAMES[architecture] | EMBEDDING_NAMES[architecture]


def fp16_overflows(architecture: str) -> bool:
    """T5 and mT5 activations overflow fp16 (NaN loss); BART's do not."""
    return architecture in T5_FAMILY


def static_problems(cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """(errors, warnings) known from the config alone: LoRA targets no module has (the seed's `wi` on mT5), a
    decoder-only model's prompt section, fp16 on T5/mT5."""
    errors, warnings = [], []
    arch = cfg.model.architecture
    if cfg.qlora.use_qlora:
        bad = [t for t in cfg.qlora.target_modules if t not in lora_target_names(arch)]
        if bad:
            errors.append(
                f"{cfg.name}: qlora.target_modules {bad} match no module of a {arch} model; "
                f"use names from {sorted(LINEAR_NAMES[arch])}"
                + (" (T5/mT5 feed-forward layers are wi_0 and wi_1, not wi)" if "wi" in bad else "")
            )
    if cfg.prompt is not None:  # the decoder-only family's section (trainables/trial/families/causal_lm)
        errors.append(f"{cfg.name}: prompt: is for decoder-only models (llama, qwen2, qwen3); a {arch} model reads the "
                      "dialogue as its encoder input: remove the prompt section (tokenizer.input_prefix is its prefix)")
    if cfg.training.fp16 and fp16_overflows(arch):
        warnings.append(
            f"{cfg.name}: fp16 on a {arch} model overflows (NaN loss); it will run in bf16, "
            "or fp32 where the card has no bf16"
        )
    return errors, warnings


def architecture_problem(architecture: str, model_type: str | None, checkpoint: str) -> str | None:
    """Why a checkpoint of `model_type` (its config.json) can't run as `architecture`, or None. T5 and mT5 are one
    family here (the same layers and LoRA names); BART against either is not: LoRA targets, precision and framing
    would all be decided for the wrong model."""
    if model_type is None:
        return None
    family = {"mt5": "t5"}.get(architecture, architecture)
    found = {"mt5": "t5"}.get(model_type, model_type)
    if found == family:
        return None
    return (f"model.checkpoint {checkpoint} is a {model_type} model, but model.architecture says {architecture}; "
            f"set model.architecture to {model_type if model_type in FAMILIES else 'its family'}, "
            "or point model.checkpoint at a model of that family")
