"""The seq2seq family's models: AutoModelForSeq2SeqLM for training (4-bit base, vocabulary grown, LoRA with the
added tokens' rows, through families.common) and rebuilt from a checkpoint for predict and export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.trial.families import LoadRecord, common
from trainables.trial.families.seq2seq.checks import architecture_problem

if TYPE_CHECKING:
    from trainables.config import ExperimentConfig


def model_class():
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM


def load_model(exp: ExperimentConfig, model_path: str, tokenizer, settings) -> tuple[Any, LoadRecord]:
    """The seq2seq model for training, with 4-bit quantization and a LoRA adapter as the settings say."""
    from peft import TaskType

    return common.load_for_training(exp, model_path, tokenizer, settings, model_class(), TaskType.SEQ_2_SEQ_LM,
                                    architecture_problem)


def load_for_inference(checkpoint: Path, meta: dict[str, Any], dequantize: bool = False):
    return common.load_for_inference(checkpoint, meta, model_class(), dequantize)
