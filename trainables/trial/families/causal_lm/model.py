"""The causal-LM family's models: the tokenizer with a pad token of its own, AutoModelForCausalLM for training
(4-bit base, vocabulary grown, LoRA with the added tokens' rows, through families.common) and rebuilt from a
checkpoint for predict and export.

Loading goes through one function, `choose_loader`: Unsloth's FastLanguageModel where decide_settings said the
trial trains through it (trainables.trial.unsloth: a CUDA GPU, unsloth installed and imported first, a setting it
offers), else the plain transformers + peft + bitsandbytes path; the reason is recorded either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from trainables.trial.families import LoadRecord, common
from trainables.trial.families.causal_lm.checks import architecture_problem
from trainables.trial.families.causal_lm.prompt import PAD_TOKEN

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig

def model_class():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def load_tokenizer(model_path: str, exp: ExperimentConfig):
    """The checkpoint's tokenizer with the speaker/mask tokens (families.common) and a pad token that is not the
    EOS; it pads on the right, as training batches do (generation pads its prompts on the left by itself)."""
    tokenizer = common.load_tokenizer(model_path, exp.tokenizer.special_tokens)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "right"
    return tokenizer


def plain_loader(exp: ExperimentConfig, model_path: str, tokenizer, settings) -> tuple[Any, LoadRecord]:
    """transformers + peft + bitsandbytes: the base (4-bit NF4 where the settings say), LoRA (CAUSAL_LM) on the
    config's targets, the added tokens' rows trained."""
    from peft import TaskType

    return common.load_for_training(exp, model_path, tokenizer, settings, model_class(), TaskType.CAUSAL_LM,
                                    architecture_problem)


def unsloth_loader(exp: ExperimentConfig, model_path: str, tokenizer, settings) -> tuple[Any, LoadRecord]:
    """Unsloth's FastLanguageModel for the base and its LoRA (trainables.trial.unsloth), the rest as the plain path:
    the architecture check, the grown vocabulary, the added tokens' rows trained."""
    from peft import TaskType

    from trainables.trial import unsloth

    return common.load_for_training(exp, model_path, tokenizer, settings, model_class(), TaskType.CAUSAL_LM,
                                    architecture_problem, accelerator=unsloth)


def choose_loader(exp: ExperimentConfig, settings) -> Callable[..., tuple[Any, LoadRecord]]:
    """The one place the loader is chosen: Unsloth's where decide_settings said this trial trains through it
    (settings.unsloth, with the reason either way in eff_unsloth_reason), else the plain path."""
    return unsloth_loader if settings.unsloth else plain_loader


def load_model(exp: ExperimentConfig, model_path: str, tokenizer, settings) -> tuple[Any, LoadRecord]:
    """The causal LM for training, loaded by the loader `choose_loader` picks."""
    return choose_loader(exp, settings)(exp, model_path, tokenizer, settings)


def load_for_inference(checkpoint: Path, meta: dict[str, Any], dequantize: bool = False):
    """(model, tokenizer) of a trial checkpoint or an exported folder (its saved tokenizer has the pad token)."""
    return common.load_for_inference(checkpoint, meta, model_class(), dequantize)
