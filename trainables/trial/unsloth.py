"""Unsloth for the decoder-only family: when a trial may use it, and loading through its FastLanguageModel.

Unsloth (`qlora.use_unsloth: true`) trains decoder-only models with its own kernels: measured on an H200 it was
2-4.5x faster than transformers + peft + bitsandbytes at a fraction of the memory (BENCHMARKS.md, FIELD-NOTES.md).
It has no encoder-decoder path (T5, mT5, BART), needs a CUDA GPU even to import, and must be imported before
transformers in the process that trains, since it patches transformers' classes as it loads.

So the decision is made in one place, `decide`, from the config and the machine, before anything heavy is
imported; a trial that may use Unsloth imports it first (`import_before_transformers`, called by the trial's entry
point, trainables.trial.entry); every reason it can't run is recorded (`eff_unsloth: false`,
`eff_unsloth_reason`) and the plain transformers + peft + bitsandbytes path runs instead. Where it runs,
`load_base` and `attach_lora` replace the plain loader's two halves (trainables.trial.families.common); the rest of
the recipe (data, Trainer, checkpoints, predict, export) is the same code, since Unsloth returns an ordinary peft
model. One difference: Unsloth computes the training loss inside the model without materialising the logits (its
memory saving), so such a trial hands the labels to the model instead of computing the loss from the logits.

Knows nothing of Ray; torch and unsloth are imported inside the functions.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig

log = logging.getLogger(__name__)

# Model types FastLanguageModel dispatches to its own patched classes (unsloth/models/loader.py, 2026.10.9) among
# the architectures this project serves.
SUPPORTED_ARCHITECTURES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2"})
NOT_REQUESTED = "not requested"
_IMPORT_FAILED: list[str] = []  # why `import unsloth` failed in this process, once tried


@dataclass(frozen=True)
class Decision:
    use: bool
    reason: str  # why not, or what runs; recorded as eff_unsloth_reason


def decide(exp: ExperimentConfig, family: str, cuda: bool, installed: bool,
           transformers_first: bool = False) -> Decision:
    """Whether this trial trains through Unsloth, and why (not). `family`: the config's model family name;
    `cuda`/`installed`: the machine; `transformers_first`: transformers was imported in this process before
    Unsloth could be (its patches would then not apply)."""
    q = exp.qlora
    if not q.use_unsloth:
        return Decision(False, NOT_REQUESTED)
    problem = (_model_problem(exp, family) or _setting_problem(exp)
               or _machine_problem(cuda, installed, transformers_first))
    if problem:
        return Decision(False, f"{problem}; plain transformers + peft{' + bitsandbytes' if q.load_in_4bit else ''}")
    return Decision(True, f"FastLanguageModel ({'4-bit NF4' if q.load_in_4bit else '16-bit'} base, LoRA, "
                          f"{'Unsloth' if exp.training.gradient_checkpointing else 'no'} gradient checkpointing)")


def _model_problem(exp: ExperimentConfig, family: str) -> str | None:
    arch = exp.model.architecture
    if family != "causal_lm":
        return f"Unsloth has no encoder-decoder fast path for {arch}"
    if arch not in SUPPORTED_ARCHITECTURES:
        return f"Unsloth's FastLanguageModel has no fast path for {arch}"
    return None


def _setting_problem(exp: ExperimentConfig) -> str | None:
    """Settings FastLanguageModel does not offer (it loads 4-bit bases as NF4 with double quantization)."""
    q = exp.qlora
    if not q.use_qlora:
        return "full fine-tuning (qlora.use_qlora: false) runs the plain path"
    if q.load_in_4bit and q.bnb_4bit_quant_type != "nf4":
        return f"Unsloth loads 4-bit bases as NF4 only, the config asks for {q.bnb_4bit_quant_type}"
    if q.load_in_4bit and not q.bnb_4bit_use_double_quant:
        return "Unsloth always uses double quantization, the config turns it off"
    return None


def _machine_problem(cuda: bool, installed: bool, transformers_first: bool) -> str | None:
    if not cuda:
        return "no CUDA GPU (Unsloth needs one)"
    if not installed:
        return "unsloth not installed (on a GPU machine: pip install '.[unsloth]')"
    if _IMPORT_FAILED:
        return _IMPORT_FAILED[-1]
    if transformers_first:
        return "transformers was imported before unsloth in this process"
    return None


def import_before_transformers(exp: ExperimentConfig, family: str) -> Decision:
    """In a trial's process, before transformers is imported: decide, and import unsloth where it will be used.
    An import that fails turns into a recorded reason (the plain path runs), never a failed trial."""
    import importlib.util

    import torch

    decision = decide(exp, family, torch.cuda.is_available(), importlib.util.find_spec("unsloth") is not None,
                      transformers_first="transformers" in sys.modules and "unsloth" not in sys.modules)
    if not decision.use:
        return decision
    try:
        import unsloth  # noqa: F401  (patches transformers; must come first)
    except Exception as err:  # noqa: BLE001 - Unsloth raises many kinds on a machine it can't use
        _IMPORT_FAILED.append(f"import unsloth failed ({type(err).__name__}: {str(err).strip()[:160]})")
        log.warning("%s: %s; the plain path runs", exp.name, _IMPORT_FAILED[-1])
        return decide(exp, family, True, True)
    return decision


def load_base(exp: ExperimentConfig, model_path: str, precision: str):
    """The base model through FastLanguageModel (4-bit NF4 or 16-bit as the config says), without its tokenizer:
    the trial uses its own, with the added speaker/mask tokens. (families.common.load_for_training calls this.)"""
    import torch
    from unsloth import FastLanguageModel

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    tok = exp.tokenizer
    model, _ = FastLanguageModel.from_pretrained(
        model_name=model_path, max_seq_length=tok.encoder_max_len + tok.decoder_max_len, dtype=dtype,
        load_in_4bit=exp.qlora.load_in_4bit, load_in_16bit=not exp.qlora.load_in_4bit, fix_tokenizer=False,
        random_state=exp.training.seed)
    return model


def attach_lora(model, lora, exp: ExperimentConfig):
    """The LoRA that `lora` (a peft LoraConfig built by families.common.with_lora: rank, alpha, dropout, targets,
    the added tokens' trainable rows) describes, through FastLanguageModel.get_peft_model: its LoRA kernels and,
    where the config asks for gradient checkpointing, its own ("unsloth")."""
    from unsloth import FastLanguageModel

    t = exp.training
    return FastLanguageModel.get_peft_model(
        model, r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
        target_modules=sorted(lora.target_modules), bias="none", random_state=t.seed,
        use_gradient_checkpointing="unsloth" if t.gradient_checkpointing else False,
        trainable_token_indices=lora.trainable_token_indices)
