"""Model families: everything that differs between kinds of model, behind one small protocol.

A *family* is one folder in this package (`seq2seq/` for T5/mT5/BART, `causal_lm/` for decoder-only LLMs such as
Llama, Qwen2, Qwen3) whose `__init__.py` exposes `FAMILY`, an object implementing `ModelFamily`; its code is split
into files by job (the stand-in, the framing, the model, generation, `shapes.py` for the plan). The recipe
(trainables.trial.recipe), the speed layer, the plan, `check`, `predict` and `export` talk to the family they get
from `family_of(architecture)`, never to `AutoModelForSeq2SeqLM` or to T5-versus-BART branches. A newcomer adds
a family by adding one such folder and registering its architectures in `FAMILIES` below, with its tests
(tests/test_family_contract.py runs the contract against every registered family whose module imports).

The protocol is what a trial needs; the static half (names, checks, dimensions) must not import torch, so that
`check` and `plan` stay instant.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from trainables.config import ExperimentConfig
    from trainables.trial.families.shapes import FamilyShapes


@dataclass(frozen=True)
class LoadRecord:
    """What `load_model` decided while loading, for the trial's results: eff_token_rows, and notes appended to
    eff_notes (a LoRA rank capped, a target renamed, rows peft left untrained). The recipe folds it into the
    frozen EffectiveSettings once, with dataclasses.replace."""

    token_rows: str
    notes: tuple[str, ...] = ()


class Framing(Protocol):
    """How a family frames sequences for one tokenizer and model, decided once per trial. A frozen dataclass:
    an exported folder records it with dataclasses.asdict, and `framing_from_record` reads it back."""

    notes: tuple[str, ...]  # appended to eff_notes
    pad_id: int  # generated rows are padded with it (and -100 where the Trainer pads predictions)

    def describe(self) -> str:
        """One line for eff_framing and `check`: what the tokenizer adds, and what the family makes of it."""

    def apply_to(self, model) -> None:
        """Set the model's generation config (and config) so that generate() starts and stops as training taught."""

    def decode(self, tokenizer, rows) -> list[str]:
        """Generated rows (a tensor, an array padded with -100 or pad_id, or lists) -> cleaned summaries, in order:
        the summary only (no prompt, no start token), cut at the first EOS, special tokens stripped."""


class ModelFamily(Protocol):
    """The seam between the recipe and a kind of model. Methods marked (static) must not import torch."""

    name: str  # "seq2seq" | "causal_lm": recorded as eff_family
    architectures: frozenset[str]  # model.architecture values it serves: the checkpoint's config.model_type

    # -- static knowledge (config checks, the plan) ---------------------------------------------------------
    def lora_target_names(self, architecture: str) -> set[str]:
        """(static) Module names LoRA may target (linear and embedding layers), for `check`."""

    def static_problems(self, exp: ExperimentConfig) -> tuple[list[str], list[str]]:
        """(static) (errors, warnings) this family knows from the config alone: LoRA targets no module has,
        precision traps, settings of another family, a prompt that leaves no room for the summary, ..."""

    def architecture_problem(self, architecture: str, model_type: str | None, checkpoint: str) -> str | None:
        """(static) Why a checkpoint whose config.json says `model_type` can't run as `architecture` (the
        config's model.architecture), or None; phrased for the user, naming the fix."""

    def fp16_overflows(self, architecture: str) -> bool:
        """(static) Whether `architecture` overflows in fp16 (NaN loss): decide_settings then runs bf16 for an
        fp16 request, and fp32 rather than fp16 where bf16 was asked for on a card without it."""

    def real_dims(self, architecture: str) -> dict[str, Any]:
        """(static) Known shape of the real checkpoint of `architecture` (config.json fields), for real-size
        stand-ins and for the plan when config.json is not on disk."""

    # -- models ---------------------------------------------------------------------------------------------
    def model_class(self):
        """The transformers Auto class of this family's models (AutoModelForSeq2SeqLM, AutoModelForCausalLM):
        from_pretrained loads a checkpoint, from_config builds an empty one (the speed layer's merged copy);
        its __name__ is what an exported folder's model card tells a user to load it with."""

    def build_standin(self, architecture: str, texts: list[str], cache_dir: Path, size: str = "tiny",
                      seed: int = 0, warm_start: bool = True) -> Path:
        """A folder with a random-weight model of `architecture` and a tokenizer trained on `texts`, loadable
        with the same from_pretrained code as a real checkpoint; deterministic (same texts, same bytes)."""

    def load_tokenizer(self, model_path: str, exp: ExperimentConfig):
        """The checkpoint's tokenizer with the speaker/mask tokens added as ordinary tokens (and, where the
        family needs one, a pad token)."""

    def load_model(self, exp: ExperimentConfig, model_path: str, tokenizer, settings) -> tuple[Any, LoadRecord]:
        """The model for training: base (4-bit as `settings` say), vocabulary grown, LoRA and the added
        tokens' rows trainable. Returns (model, LoadRecord): what was decided while loading, returned rather
        than written into `settings` (a frozen EffectiveSettings). Raises WrongArchitecture (a UserError) where
        the checkpoint is not of `exp.model.architecture`'s kind."""

    def load_for_inference(self, checkpoint: Path, meta: dict[str, Any], dequantize: bool = False):
        """(model, tokenizer) rebuilt from a trial checkpoint (its trial_meta.json, `meta`, with "experiment"
        validated) or an exported folder, on the GPU where there is one. `dequantize` (export): a 4-bit base is
        turned back into float32 weights before the adapter goes on."""

    # -- data -----------------------------------------------------------------------------------------------
    def framing(self, tokenizer, model_config, exp: ExperimentConfig) -> Framing:
        """How this tokenizer's sequences are framed (BOS/EOS, prompt), decided once and recorded as
        eff_framing. `model_config`: a transformers config, or a folder or hub id to read it from."""

    def framing_from_record(self, record: dict[str, Any]) -> Framing:
        """The Framing an exported folder recorded (dataclasses.asdict of one): its saved tokenizer frames
        inputs by itself, so probing it again would misread that frame."""

    def tokenize(self, frame: pd.DataFrame, tokenizer, exp: ExperimentConfig, framing: Framing):
        """A datasets.Dataset of input_ids/attention_mask, and labels (-100 where no loss; the summary then
        exactly one EOS) where `frame` has a summary column; truncated to the config's lengths, unpadded."""

    def collator(self, tokenizer, model):
        """The training data collator (dynamic padding, labels padded with -100)."""

    def trainer_class(self):
        """The transformers Trainer class the recipe builds on (Seq2SeqTrainer for seq2seq; the causal LM's own,
        whose prediction_step generates from the prompts): it evaluates by generating (predict_with_generate) with
        the generation_* fields of training_arguments_class."""

    def training_arguments_class(self):
        """The arguments class trainer_class takes (Seq2SeqTrainingArguments for seq2seq; for a causal LM,
        TrainingArguments with the same generation_* fields)."""

    def token_logits_and_labels(self, outputs, labels):
        """(logits, labels) aligned token for token, for the per-token loss (a causal LM shifts by one)."""

    # -- generation and export ------------------------------------------------------------------------------
    def generation_kwargs(self, gen) -> dict[str, Any]:
        """(static) The config's generation section (a GenerationSection) as generate()/GenerationConfig arguments:
        the model's generation config during training, predict, export. Lengths count the summary's tokens (a
        causal LM's are max_new_tokens/min_new_tokens)."""

    def generate_rows(self, model, rows: list[dict[str, Any]], pad_id: int, **generate_kwargs) -> list[list[int]]:
        """generate() on one batch of tokenized rows (tokenize's dicts; a dev row's labels are not its input): the
        family builds the inputs from each row (seq2seq: the encoder input, right-padded; a causal LM: the prompt
        before the first label, left-padded) and returns each row's generated ids, the summary part only for a
        causal LM (its prompt cut off), in order. The evaluation (plain and fast) and generate() go through it."""

    def generate(self, model, tokenizer, dialogues: list[str], exp: ExperimentConfig, framing: Framing | None = None,
                 batch_size: int | None = None) -> list[str]:
        """One cleaned summary per dialogue, in order: batched (the config's eval batch unless given), framed
        as in training (`framing` probed from tokenizer and model when None), the config's generation settings;
        only the generated summary is decoded."""

    def generation_cache(self, beams: int):
        """A fresh `past_key_values` for one generate() call of the speed layer's fast evaluation, or None for
        transformers' own. Seq2seq: with beams, a cache whose beam reorder moves only the decoder's self-attention
        keys/values (a dialogue's beams share one encoder output, so reordering the cross-attention copies equal
        rows: 58% of an evaluation's GPU time in the H100 profile)."""

    def generation_row_bytes(self, config, input_len: int, beams: int, gen_len: int, dtype_bytes: int) -> int:
        """(static) A generous estimate of the GPU memory one dialogue needs while `config`'s model beam-searches
        `gen_len` tokens from `input_len` input tokens, weights and caches in `dtype_bytes`-byte floats: the speed
        layer's fast evaluation sizes its generation batches from it."""

    def export_usage(self, exp: ExperimentConfig) -> tuple[str, str]:
        """(static) For an exported folder's model card: (Python lines that summarize `dialogue` once `model` and
        `tokenizer` are loaded, how the saved tokenizer frames the input by itself)."""

    def exported_inputs(self, tokenizer, dialogue: str, exp: ExperimentConfig) -> list[int]:
        """The input ids export_usage's code feeds an exported model for `dialogue`, with plain transformers calls
        only on the exported (prepare_export'ed) tokenizer: what tests compare with training's framing."""

    def prepare_export(self, model, tokenizer, framing: Framing, exp: ExperimentConfig) -> None:
        """Make the folder `export` saves self-framing: plain AutoTokenizer/`model_class` use reproduce predict's
        output (the tokenizer frames a single text as training framed inputs). `model` is None for
        --adapter-only, where only the tokenizer is saved."""

    def export_notes(self, architecture: str) -> str:
        """(static) Lines a merged folder's model card adds to its usage section for `architecture` (what loading
        it logs and why that is harmless, say); "" for none."""

    # -- the plan -------------------------------------------------------------------------------------------
    shapes: FamilyShapes  # (static) the family's shapes module (families/<family>/shapes.py): `shapes_of(arch)`


class ChecksFromModule:
    """The protocol's static checks, answered by the family's `checks` module (a class attribute): each family's
    class derives from this instead of writing the same four one-line delegations."""

    checks: Any

    def lora_target_names(self, architecture: str) -> set[str]:
        return self.checks.lora_target_names(architecture)

    def static_problems(self, exp: ExperimentConfig) -> tuple[list[str], list[str]]:
        return self.checks.static_problems(exp)

    def architecture_problem(self, architecture: str, model_type: str | None, checkpoint: str) -> str | None:
        return self.checks.architecture_problem(architecture, model_type, checkpoint)

    def fp16_overflows(self, architecture: str) -> bool:
        return self.checks.fp16_overflows(architecture)


# architecture -> the module in this package that serves it. Adding a family: a module and its line here.
FAMILIES = {
    "t5": "seq2seq", "mt5": "seq2seq", "bart": "seq2seq",
    "llama": "causal_lm", "qwen2": "causal_lm", "qwen3": "causal_lm",
}


def family_of(architecture: str) -> ModelFamily:
    """The family serving `architecture` (a config's model.architecture)."""
    try:
        module = FAMILIES[architecture]
    except KeyError:
        raise ValueError(f"no model family serves architecture {architecture!r}; known: {', '.join(FAMILIES)}") from None
    return importlib.import_module(f"{__name__}.{module}").FAMILY


def shapes_of(architecture: str) -> FamilyShapes:
    """The static shapes module of the family serving `architecture`, for the plan: it imports only that file (no
    torch, not the family's runtime code), so `plan` stays instant. The family's `shapes` attribute is the same."""
    if architecture not in FAMILIES:
        family_of(architecture)  # raises the registry's error
    return importlib.import_module(f"{__name__}.{FAMILIES[architecture]}.shapes")
