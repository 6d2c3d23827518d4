"""The causal-LM family's Trainer: transformers' Trainer, evaluated by generating from the prompts, as
Seq2SeqTrainer evaluates a seq2seq model by generating from its encoder inputs.

A dev row holds prompt + summary + EOS (the labels mask the prompt), so the plain Trainer's evaluation would give the
loss and the logits of the teacher-forced summary, never a generated one. `CausalLMTrainer.prediction_step` returns
the loss of the whole row (the trial's loss function, prompt masked) and, where `predict_with_generate` is on, the
summaries generated from each row's prompt alone (left-padded, new tokens only: generate.py), which the Trainer's
evaluation loop gathers in file order and hands to compute_metrics, exactly as for seq2seq.

Imported only by the family's methods (transformers at the top: the arguments class must be picklable, since the
Trainer saves it with every checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Trainer, TrainingArguments

from trainables.trial.families.causal_lm.generate import generate_batch, prompt_of


@dataclass
class CausalLMTrainingArguments(TrainingArguments):
    """TrainingArguments with Seq2SeqTrainingArguments' generation fields, so that the recipe's one set of arguments
    fits both families. generation_max_length counts new tokens (the config's generation.max_length)."""

    predict_with_generate: bool = False
    generation_max_length: int | None = None
    generation_num_beams: int | None = None


class CausalLMTrainer(Trainer):
    """Trainer whose evaluation step also generates each dev row's summary from its prompt."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        loss, _, _ = super().prediction_step(model, inputs, prediction_loss_only=True, ignore_keys=ignore_keys)
        if prediction_loss_only or not self.args.predict_with_generate:
            return loss, None, None
        import torch

        labels = inputs["labels"]
        pad = model.generation_config.pad_token_id
        prompts = [prompt_of({"input_ids": ids.tolist(), "labels": row.tolist()})
                   for ids, row in zip(inputs["input_ids"], labels)]
        kwargs = {k: v for k, v in (("num_beams", self.args.generation_num_beams),
                                    ("max_new_tokens", self.args.generation_max_length)) if v}
        generated = generate_batch(model, prompts, pad, **kwargs)
        width = max(1, max(len(g) for g in generated))
        tensor = torch.tensor([g + [pad] * (width - len(g)) for g in generated], device=labels.device)
        return loss, tensor, labels
