"""The causal-LM family: decoder-only LLMs (Llama, Qwen2, Qwen3) fine-tuned to write the summary after a prompt.

`FAMILY` implements trainables.trial.families.ModelFamily; each method hands over to the file that does the job:
names.py and checks.py (static: layer names, the config's traps, what each length means), standin.py (offline
stand-ins), prompt.py (the prompt from the dialogue, labels on the summary and one EOS, truncation), model.py
(tokenizer with its pad token, the loader, LoRA CAUSAL_LM), generate.py (left-padded batched generation, new tokens
only), trainer.py (the Trainer that evaluates by generating from the prompts), export.py (the chat template an
exported folder renders its prompt with), shapes.py (the plan's view of the model). Importing this package imports
no torch: the heavy modules load inside the methods that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainables.trial.families import ChecksFromModule

from trainables.trial.families.causal_lm import checks, names, shapes

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from trainables.config import ExperimentConfig, GenerationSection


class CausalLMFamily(ChecksFromModule):
    name = "causal_lm"
    architectures = names.ARCHITECTURES
    shapes = shapes  # the plan's static view of the model (trainables.trial.families.shapes.FamilyShapes)
    checks = checks  # answers lora_target_names, static_problems, architecture_problem, fp16_overflows

    # -- static knowledge ------------------------------------------------------------------------------------
    def real_dims(self, architecture: str) -> dict[str, Any]:
        from trainables.trial.families.causal_lm.standin import real_dims

        return real_dims(architecture)

    # -- models ----------------------------------------------------------------------------------------------
    def model_class(self):
        from trainables.trial.families.causal_lm.model import model_class

        return model_class()

    def build_standin(self, architecture: str, texts: list[str], cache_dir: Path, size: str = "tiny",
                      seed: int = 0, warm_start: bool = True) -> Path:
        from trainables.trial.families.causal_lm.standin import build_standin

        return build_standin(architecture, texts, cache_dir, size=size, seed=seed, warm_start=warm_start)

    def load_tokenizer(self, model_path: str, exp: ExperimentConfig):
        from trainables.trial.families.causal_lm.model import load_tokenizer

        return load_tokenizer(model_path, exp)

    def load_model(self, exp: ExperimentConfig, model_path: str, tokenizer, settings):
        from trainables.trial.families.causal_lm.model import load_model

        return load_model(exp, model_path, tokenizer, settings)

    def load_for_inference(self, checkpoint: Path, meta: dict[str, Any], dequantize: bool = False):
        from trainables.trial.families.causal_lm.model import load_for_inference

        return load_for_inference(checkpoint, meta, dequantize)

    # -- data ------------------------------------------------------------------------------------------------
    def framing(self, tokenizer, model_config, exp: ExperimentConfig):
        """The prompt framing; it depends on the tokenizer and the config only (not on `model_config`)."""
        from trainables.trial.families.causal_lm.prompt import probe_prompt

        return probe_prompt(tokenizer, exp)

    def framing_from_record(self, record: dict[str, Any]):
        from trainables.trial.families.causal_lm.prompt import PromptFraming

        return PromptFraming(**{**record, "notes": tuple(record.get("notes", ()))})

    def tokenize(self, frame: pd.DataFrame, tokenizer, exp: ExperimentConfig, framing):
        from trainables.trial.families.causal_lm.prompt import tokenize_split

        return tokenize_split(frame, tokenizer, exp, framing)

    def collator(self, tokenizer, model):
        from transformers import DataCollatorForSeq2Seq

        # pads input_ids on the tokenizer's side (right, see model.load_tokenizer) and labels with -100
        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def trainer_class(self):
        from trainables.trial.families.causal_lm.trainer import CausalLMTrainer

        return CausalLMTrainer

    def training_arguments_class(self):
        from trainables.trial.families.causal_lm.trainer import CausalLMTrainingArguments

        return CausalLMTrainingArguments

    def token_logits_and_labels(self, outputs, labels):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return logits[:, :-1], labels[:, 1:]  # the logits at position i predict the token at i + 1

    # -- generation and export -------------------------------------------------------------------------------
    def generation_kwargs(self, gen: GenerationSection) -> dict[str, Any]:
        from trainables.trial.families.causal_lm.generate import generation_kwargs

        return generation_kwargs(gen)

    def generate(self, model, tokenizer, dialogues: list[str], exp: ExperimentConfig, framing=None,
                 batch_size: int | None = None) -> list[str]:
        from trainables.trial.families.causal_lm.generate import generate_summaries

        return generate_summaries(model, tokenizer, dialogues, exp, framing=framing, batch_size=batch_size)

    def generate_rows(self, model, rows: list[dict[str, Any]], pad_id: int, **kwargs) -> list[list[int]]:
        from trainables.trial.families.causal_lm.generate import generate_batch, prompt_of

        return generate_batch(model, [prompt_of(r) for r in rows], pad_id, **kwargs)

    def export_usage(self, exp: ExperimentConfig) -> tuple[str, str]:
        code = ("enc = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": dialogue}], "
                "add_generation_prompt=True, return_dict=True, return_tensors=\"pt\")\n"
                "new = model.generate(**enc)[0][enc[\"input_ids\"].shape[1]:]  # the summary: the tokens after the prompt\n"
                "summary = tokenizer.decode(new, skip_special_tokens=True)")
        return code, ("The saved chat template renders this prompt around the dialogue (system message and input "
                      f"prefix included; no truncation: training cut dialogues to {exp.tokenizer.encoder_max_len} "
                      "prompt tokens)")

    def exported_inputs(self, tokenizer, dialogue: str, exp: ExperimentConfig) -> list[int]:
        messages = [{"role": "user", "content": dialogue}]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])

    def prepare_export(self, model, tokenizer, framing, exp: ExperimentConfig) -> None:
        from trainables.trial.families.causal_lm.export import set_chat_template

        set_chat_template(tokenizer, framing)

    def export_notes(self, architecture: str) -> str:
        return ""  # the decoder-only classes load a merged folder without messages to explain

    # -- the speed layer's fast evaluation -------------------------------------------------------------------
    def generation_cache(self, beams: int):
        return None  # transformers' own cache: a decoder-only model has no cross-attention to spare

    def generation_row_bytes(self, config, input_len: int, beams: int, gen_len: int, dtype_bytes: int) -> int:
        from trainables.trial.families.causal_lm.generate import generation_row_bytes

        return generation_row_bytes(config, input_len, beams, gen_len, dtype_bytes)


FAMILY = CausalLMFamily()
