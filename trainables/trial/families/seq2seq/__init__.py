"""The seq2seq family: encoder-decoder models (T5, mT5, BART) fine-tuned with Seq2SeqTrainer.

`FAMILY` implements trainables.trial.families.ModelFamily; each method hands over to the file that does the job:
checks.py (static: LoRA names, precision traps, the architecture check), standin.py (offline stand-ins),
framing.py (BOS/EOS framing and tokenizing), model.py (loading for training and inference), generate.py
(summaries), export.py (a self-framing tokenizer), beams.py (the speed layer's beam-search hooks), shapes.py
(the plan's view of the model). Importing this
package imports no torch: the heavy modules load inside the methods that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainables.trial.families import ChecksFromModule

from trainables.trial.families.seq2seq import checks, shapes

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from trainables.config import ExperimentConfig


class Seq2SeqFamily(ChecksFromModule):
    name = "seq2seq"
    architectures = checks.ARCHITECTURES
    shapes = shapes  # the plan's static view of the model (trainables.trial.families.shapes.FamilyShapes)
    checks = checks  # answers lora_target_names, static_problems, architecture_problem, fp16_overflows

    # -- static knowledge ------------------------------------------------------------------------------------
    def real_dims(self, architecture: str) -> dict[str, Any]:
        from trainables.trial.families.seq2seq.standin import REAL_DIMS

        return dict(REAL_DIMS[architecture])

    # -- models ----------------------------------------------------------------------------------------------
    def model_class(self):
        from trainables.trial.families.seq2seq.model import model_class

        return model_class()

    def build_standin(self, architecture: str, texts: list[str], cache_dir: Path, size: str = "tiny",
                      seed: int = 0, warm_start: bool = True) -> Path:
        from trainables.trial.families.seq2seq.standin import build_standin

        return build_standin(architecture, texts, cache_dir, size=size, seed=seed, warm_start=warm_start)

    def load_tokenizer(self, model_path: str, exp: ExperimentConfig):
        from trainables.trial.families.common import load_tokenizer

        return load_tokenizer(model_path, exp.tokenizer.special_tokens)

    def load_model(self, exp: ExperimentConfig, model_path: str, tokenizer, settings):
        from trainables.trial.families.seq2seq.model import load_model

        return load_model(exp, model_path, tokenizer, settings)

    def load_for_inference(self, checkpoint: Path, meta: dict[str, Any], dequantize: bool = False):
        from trainables.trial.families.seq2seq.model import load_for_inference

        return load_for_inference(checkpoint, meta, dequantize)

    # -- data ------------------------------------------------------------------------------------------------
    def framing(self, tokenizer, model_config, exp: ExperimentConfig):
        from trainables.trial.families.seq2seq.framing import probe_framing

        return probe_framing(tokenizer, model_config)

    def framing_from_record(self, record: dict[str, Any]):
        from trainables.trial.families.seq2seq.framing import Framing

        return Framing(**{**record, "notes": tuple(record.get("notes", ()))})

    def tokenize(self, frame: pd.DataFrame, tokenizer, exp: ExperimentConfig, framing):
        from trainables.trial.families.seq2seq.framing import tokenize_split

        tok = exp.tokenizer
        return tokenize_split(frame, tokenizer, tok.input_prefix, tok.encoder_max_len, tok.decoder_max_len, framing)

    def collator(self, tokenizer, model):
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)

    def trainer_class(self):
        from transformers import Seq2SeqTrainer

        return Seq2SeqTrainer

    def training_arguments_class(self):
        from transformers import Seq2SeqTrainingArguments

        return Seq2SeqTrainingArguments

    def token_logits_and_labels(self, outputs, labels):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return logits, labels  # the decoder's logits at position i predict labels[i]

    # -- generation and export -------------------------------------------------------------------------------
    def generation_kwargs(self, gen) -> dict[str, Any]:
        from trainables.trial.inference import generation_kwargs

        return generation_kwargs(gen)

    def generate_rows(self, model, rows: list[dict[str, Any]], pad_id: int, **kwargs) -> list[list[int]]:
        from trainables.trial.families.seq2seq.generate import generate_rows

        return generate_rows(model, [list(r["input_ids"]) for r in rows], pad_id, **kwargs)

    def generate(self, model, tokenizer, dialogues: list[str], exp: ExperimentConfig, framing=None,
                 batch_size: int | None = None) -> list[str]:
        from trainables.trial.families.seq2seq.generate import generate_summaries

        return generate_summaries(model, tokenizer, dialogues, exp, framing=framing, batch_size=batch_size)

    def export_usage(self, exp: ExperimentConfig) -> tuple[str, str]:
        tok = exp.tokenizer
        code = (f"enc = tokenizer({tok.input_prefix!r} + dialogue, truncation=True, return_tensors=\"pt\")  "
                f"# truncates at {tok.encoder_max_len} tokens\n"
                "summary = tokenizer.decode(model.generate(**enc)[0], skip_special_tokens=True)")
        return code, "The saved tokenizer frames a single text this way by itself (`tokenizer(text)`)"

    def exported_inputs(self, tokenizer, dialogue: str, exp: ExperimentConfig) -> list[int]:
        return tokenizer(exp.tokenizer.input_prefix + dialogue, truncation=True)["input_ids"]

    def prepare_export(self, model, tokenizer, framing, exp: ExperimentConfig) -> None:
        from trainables.trial.families.seq2seq.export import frame_tokenizer

        frame_tokenizer(tokenizer, framing)

    def export_notes(self, architecture: str) -> str:
        from trainables.trial.families.seq2seq.export import export_notes

        return export_notes(architecture)

    # -- the speed layer's fast evaluation (beams.py) --------------------------------------------------------
    def generation_cache(self, beams: int):
        from trainables.trial.families.seq2seq.beams import generation_cache

        return generation_cache(beams)

    def generation_row_bytes(self, config, input_len: int, beams: int, gen_len: int, dtype_bytes: int) -> int:
        from trainables.trial.families.seq2seq.beams import generation_row_bytes

        return generation_row_bytes(config, input_len, beams, gen_len, dtype_bytes)


FAMILY = Seq2SeqFamily()
