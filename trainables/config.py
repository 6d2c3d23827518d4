"""Experiment configs: the typed schema, loading a folder of YAMLs, and the run modes.

One YAML file in `search_spaces/` is one experiment. Everything here is validated before Ray or torch
is imported, so a broken file fails in well under a second with a message naming the file and the key.
This module knows nothing of Ray or torch.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.errors import UserError

MODES = ("smoke", "quick", "full")
# transformers.SchedulerType values; kept here so that checking a config needs no transformers import.
SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay",
)
# Speaker tags and PII masks of the competition data. They are added to the tokenizer as ordinary
# tokens (not "special" ones) so that decode(skip_special_tokens=True) keeps them: the references contain them.
DEFAULT_SPECIAL_TOKENS = [
    "#Person1#", "#Person2#", "#Person3#", "#PhoneNumber#", "#Address#", "#PassportNumber#",
    "#DateOfBirth#", "#SSN#", "#CardNumber#", "#CarNumber#", "#Email#",
]
METRICS = ("competition_score", "rouge1", "rouge2", "rougeL", "eval_loss")


def mode_of(metric: str) -> str:
    """Whether a metric is better high ("max") or low ("min": only the loss)."""
    return "min" if metric == "eval_loss" else "max"


class ConfigError(UserError, ValueError):
    """A config problem, phrased for the user: which file, which key, how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ModelSection(_Section):
    checkpoint: str = Field(min_length=1, description="Hugging Face model id or local directory")
    architecture: Literal["mt5", "t5", "bart"]


class TokenizerSection(_Section):
    encoder_max_len: int = Field(gt=0, le=4096)
    decoder_max_len: int = Field(gt=0, le=2048)
    input_prefix: str = ""
    special_tokens: list[str] = Field(default_factory=lambda: list(DEFAULT_SPECIAL_TOKENS))


class TrainingSection(_Section):
    num_train_epochs: int = Field(gt=0, le=100)
    per_device_train_batch_size: int = Field(gt=0)
    per_device_eval_batch_size: int = Field(gt=0)
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    learning_rate: float = Field(gt=0, lt=1)
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    fp16: bool = False
    bf16: bool = False
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    # None: evaluate (and checkpoint) at each epoch's end only; N: also every N optimizer steps.
    eval_steps: int | None = Field(default=None, gt=0)
    logging_steps: int = Field(default=50, gt=0)
    early_stopping_patience: int | None = Field(default=None, gt=0)
    seed: int = 42

    @field_validator("lr_scheduler_type")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        if value not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {value!r}; use one of {', '.join(SCHEDULERS)}")
        return value

    @model_validator(mode="after")
    def _one_precision(self) -> "TrainingSection":
        if self.fp16 and self.bf16:
            raise ValueError("fp16 and bf16 are both true; choose one (bf16 for T5/mT5)")
        return self


class GenerationSection(_Section):
    num_beams: int = Field(default=4, gt=0, le=64)
    max_length: int = Field(gt=0)
    min_length: int = Field(default=0, ge=0)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _min_below_max(self) -> "GenerationSection":
        if self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} is above max_length {self.max_length}")
        return self


class QLoraSection(_Section):
    """The seed's `qlora:` block. `use_qlora` turns the LoRA adapter on; `load_in_4bit` quantizes the base.

    The seed's config 4 has use_qlora: true with load_in_4bit: false, which is LoRA on an unquantized
    base; the two keys keep that meaning here."""

    use_qlora: bool = True
    load_in_4bit: bool = True
    lora_rank: int = Field(default=16, gt=0, le=1024)
    lora_alpha: int = Field(default=32, gt=0)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1)
    use_unsloth: bool = False
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class MetricSection(_Section):
    tokenization: Literal["whitespace", "morpheme"] = "whitespace"
    # Drives early stopping inside the trial. Which checkpoints Tune keeps, and the best trial/checkpoint for
    # report and predict, follow the command line's --metric (one metric across all trials).
    best_metric: Literal["competition_score", "rouge1", "rouge2", "rougeL", "eval_loss"] = "competition_score"


class SpeedSection(_Section):
    """The speed-ups of trainables/speed.py; `speed: off` (or `enabled: false`) is the plain Seq2SeqTrainer path."""

    enabled: bool = True
    fast_eval: bool = True  # generate from a merged half-precision copy, longest dialogues first, larger batches
    micro_batch: bool = True  # larger micro-batch, less accumulation, same effective batch (GPU only)
    tf32: bool = True
    memory_gib: float = Field(default=20.0, gt=0)  # GPU memory cap per trial while speed-ups are on
    max_eval_rows: int = Field(default=256, gt=0)  # most dialogues per generation batch


class ExperimentConfig(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    description: str = ""
    model: ModelSection
    tokenizer: TokenizerSection
    training: TrainingSection
    generation: GenerationSection
    qlora: QLoraSection
    metric: MetricSection = Field(default_factory=MetricSection)
    speed: SpeedSection = Field(default_factory=SpeedSection)

    @field_validator("speed", mode="before")
    @classmethod
    def _speed_switch(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value  # `speed: off` / `speed: false`

    @model_validator(mode="after")
    def _generation_fits_decoder(self) -> "ExperimentConfig":
        if self.generation.max_length > self.tokenizer.decoder_max_len * 2:
            raise ValueError(
                f"generation.max_length {self.generation.max_length} is far above tokenizer.decoder_max_len "
                f"{self.tokenizer.decoder_max_len}; the model was never trained on summaries that long"
            )
        return self


def _format_validation_error(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: invalid experiment config"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key; remove it or fix its spelling (see search_spaces/README.md)")
        elif item["type"] == "missing":
            lines.append(f"  - {key}: required key is missing")
        elif not item["loc"]:  # a check across settings: its input is the whole config, too long to echo
            lines.append(f"  - {key}: {item['msg']}")
        else:
            lines.append(f"  - {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    """The raw mapping of one YAML file (safe loader only), with a one-line error for unreadable files."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: YAML syntax error{at}: {getattr(err, 'problem', err)}") from None
    if raw is None:
        raise ConfigError(f"{path}: file is empty; write an experiment (sections model:, tokenizer:, training:, "
                          "generation:, qlora:; see search_spaces/README.md) or delete the file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, training:, ...), got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return raw


def validate_experiment(raw: dict[str, Any], path: Path) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(Path(path), err)) from None


# Search dimensions (trainables/search.py samples them): a setting written as a one-key mapping such as
# `learning_rate: {loguniform: [1.0e-5, 1.0e-3]}`. The fixed grid refuses them, so a search YAML never runs as
# one fixed trial with a made-up value.
DIMENSION_KINDS = ("loguniform", "uniform", "integer", "choice")


def is_dimension(value: Any) -> bool:
    return isinstance(value, dict) and any(kind in value for kind in DIMENSION_KINDS)


def dimension_keys(raw: dict[str, Any]) -> list[str]:
    """`section.key` of every search dimension in a raw experiment mapping."""
    found = [name for name, value in raw.items() if is_dimension(value)]
    for section, values in raw.items():
        if isinstance(values, dict) and not is_dimension(values):
            found += [f"{section}.{key}" for key, value in values.items() if is_dimension(value)]
    return found


def load_experiment(path: Path) -> ExperimentConfig:
    """Read and validate one fixed experiment YAML (safe loader only)."""
    raw = read_yaml(path)
    searched = dimension_keys(raw)
    if searched:
        raise ConfigError(
            f"{path}: {', '.join(searched)} {'is a search dimension' if len(searched) == 1 else 'are search dimensions'}, "
            f"which the fixed grid does not sample; run `python tune_main7.py search {path} --samples N`, or write one "
            "value (search YAMLs belong in search_spaces/search/)")
    return validate_experiment(raw, path)


def load_search_space(directory: Path, only: list[str] | None = None) -> list[ExperimentConfig]:
    """Load every `*.yaml`/`*.yml` in `directory`, in file-name order, and check names are unique."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such folder; pass --search-space DIR with the experiment YAMLs")
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not files:
        raise ConfigError(f"{directory}: no *.yaml experiment files; add one per experiment")
    configs = [load_experiment(f) for f in files]
    seen: dict[str, Path] = {}
    for f, cfg in zip(files, configs):
        if cfg.name in seen:
            raise ConfigError(f"{f}: experiment name {cfg.name!r} is already used by {seen[cfg.name]}; names must be unique")
        seen[cfg.name] = f
    if only:
        unknown = [n for n in only if n not in seen]
        if unknown:
            raise ConfigError(f"--only: unknown experiment(s) {', '.join(unknown)}; known: {', '.join(seen)}")
        configs = [c for c in configs if c.name in only]
    return configs


# ---------------------------------------------------------------------------------------------------
# Static checks that need no model weights: LoRA target names per family, precision traps.

# Linear layer names (last path component) in each family's seq2seq model, as transformers names them.
FAMILY_LINEAR_NAMES = {
    "t5": {"q", "k", "v", "o", "wi_0", "wi_1", "wo", "lm_head"},
    "mt5": {"q", "k", "v", "o", "wi_0", "wi_1", "wo", "lm_head"},
    "bart": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "lm_head"},
}
# Embedding layer names that LoRA can also wrap.
FAMILY_EMBEDDING_NAMES = {"t5": {"shared", "embed_tokens"}, "mt5": {"shared", "embed_tokens"}, "bart": {"shared", "embed_tokens"}}


def unmatched_lora_targets(cfg: ExperimentConfig) -> list[str]:
    """Targets that match no module of the config's family (the seed's `wi` on mT5 is one)."""
    known = FAMILY_LINEAR_NAMES[cfg.model.architecture] | FAMILY_EMBEDDING_NAMES[cfg.model.architecture]
    return [t for t in cfg.qlora.target_modules if t not in known]


def static_problems(cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """(errors, warnings) that can be known from the config alone."""
    errors, warnings = [], []
    if cfg.qlora.use_qlora:
        bad = unmatched_lora_targets(cfg)
        if bad:
            known = sorted(FAMILY_LINEAR_NAMES[cfg.model.architecture])
            errors.append(
                f"{cfg.name}: qlora.target_modules {bad} match no module of a {cfg.model.architecture} model; "
                f"use names from {known}" + (" (T5/mT5 feed-forward layers are wi_0 and wi_1, not wi)" if "wi" in bad else "")
            )
    if cfg.training.fp16 and cfg.model.architecture in ("t5", "mt5"):
        warnings.append(
            f"{cfg.name}: fp16 on a {cfg.model.architecture} model overflows (NaN loss); it will run in bf16, "
            "or fp32 where the card has no bf16"
        )
    return errors, warnings


# ---------------------------------------------------------------------------------------------------
# Modes: what each one changes, applied in the driver so that params.json shows what really ran.

SMOKE_LIMITS = {
    "num_train_epochs": 3,
    "encoder_max_len": 192,
    "decoder_max_len": 64,
    "train_batch": 8,
    "eval_batch": 16,
    "num_beams": 2,
    "lora_rank": 16,
    "min_learning_rate": 2e-3,  # a random tiny model needs a far higher rate than a pretrained one
}


def smoke_eval_steps(eval_steps: int | None, train_rows: int | None, batch: int, accumulation: int) -> int | None:
    """The config's evaluation interval, shortened so that a smoke trial on `train_rows` rows still evaluates
    at least twice per epoch (at the interval and at the epoch's end)."""
    if eval_steps is None or not train_rows:
        return eval_steps
    steps_per_epoch = math.ceil(math.ceil(train_rows / batch) / accumulation)
    return max(1, min(eval_steps, steps_per_epoch // 2))


def apply_mode(cfg: ExperimentConfig, mode: str, train_rows: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """Return the config as a plain dict for this mode, and the list of what the mode changed.

    Smoke mode shrinks sizes, lengths, beams and epochs only: each config's gradient accumulation, early
    stopping and step-based evaluation stay, the interval scaled to `train_rows` (the training file's rows)."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    d = copy.deepcopy(cfg.model_dump())
    changes: list[str] = []

    def set_value(section: str, key: str, value: Any) -> None:
        old = d[section][key]
        if old != value:
            d[section][key] = value
            changes.append(f"{section}.{key}: {old} -> {value}")

    if mode == "quick":
        set_value("training", "num_train_epochs", 1)
    elif mode == "smoke":
        lim = SMOKE_LIMITS
        t, tok, gen, q = d["training"], d["tokenizer"], d["generation"], d["qlora"]
        set_value("training", "num_train_epochs", min(t["num_train_epochs"], lim["num_train_epochs"]))
        set_value("training", "per_device_train_batch_size", min(t["per_device_train_batch_size"], lim["train_batch"]))
        set_value("training", "per_device_eval_batch_size", min(t["per_device_eval_batch_size"], lim["eval_batch"]))
        set_value("training", "eval_steps", smoke_eval_steps(t["eval_steps"], train_rows, t["per_device_train_batch_size"],
                                                             t["gradient_accumulation_steps"]))
        set_value("training", "learning_rate", max(t["learning_rate"], lim["min_learning_rate"]))
        set_value("training", "warmup_ratio", min(t["warmup_ratio"], 0.05))
        set_value("tokenizer", "encoder_max_len", min(tok["encoder_max_len"], lim["encoder_max_len"]))
        set_value("tokenizer", "decoder_max_len", min(tok["decoder_max_len"], lim["decoder_max_len"]))
        set_value("generation", "num_beams", min(gen["num_beams"], lim["num_beams"]))
        set_value("generation", "max_length", min(gen["max_length"], lim["decoder_max_len"]))
        set_value("generation", "min_length", min(gen["min_length"], 5))
        set_value("qlora", "lora_rank", min(q["lora_rank"], lim["lora_rank"]))
        set_value("qlora", "lora_alpha", min(q["lora_alpha"], 2 * lim["lora_rank"]))
    return d, changes
