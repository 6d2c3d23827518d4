"""Experiment configs: the typed schema, loading a folder of YAMLs, and the run modes.

One YAML file in `search_spaces/` is one experiment. Everything here is validated before Ray or torch
is imported, so a broken file fails in well under a second with a message naming the file and the key.
This module knows nothing of Ray or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.errors import UserError
from trainables.metrics import DEFAULT_TOKENIZATION, TOKENIZATIONS

Mode = Literal["smoke", "quick", "full"]
MODES = get_args(Mode)
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
# What a trial reports and can be ranked by; one list for the schema, the command line and Tune.
Metric = Literal["competition_score", "rouge1", "rouge2", "rougeL", "eval_loss"]
METRICS = get_args(Metric)
Tokenization = Literal[TOKENIZATIONS]  # defined with the metric (trainables.metrics)
Architecture = Literal["mt5", "t5", "bart"]


def mode_of(metric: str) -> str:
    """Whether a metric is better high ("max") or low ("min": only the loss)."""
    return "min" if metric == "eval_loss" else "max"


class ConfigError(UserError, ValueError):
    """A config problem, phrased for the user: which file, which key, how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ModelSection(_Section):
    checkpoint: str = Field(min_length=1, description="Hugging Face model id or local directory")
    architecture: Architecture


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
    tokenization: Tokenization = DEFAULT_TOKENIZATION
    # The one metric of a run: early stopping inside each trial, the checkpoints Tune keeps, and the best
    # trial/checkpoint of `report`, `predict` and `export`. `--metric` sets it for every config of a run;
    # configs of one grid must agree on it (trainables.launch checks), since Tune ranks them all by one metric.
    best_metric: Metric = "competition_score"


class SpeedSection(_Section):
    """The speed-ups of trainables/speed.py; `speed: off` (or `enabled: false`) is the plain Seq2SeqTrainer path."""

    enabled: bool = True
    fast_eval: bool = True  # generate from a merged half-precision copy, longest dialogues first, larger batches
    micro_batch: bool = True  # larger micro-batch, less accumulation, same effective batch (GPU only)
    chunked_loss: bool = True  # cross-entropy in fp32 chunks of rows, no full-size fp32 logits (trainables.losses)
    tf32: bool = True
    # PyTorch's attention (SDPA) without its cuDNN backend: on an H100 (torch 2.11) cuDNN attention spent ~7 ms of
    # CPU per call setting up each new shape, most of a training step and of every decoding step (BENCHMARKS.md)
    no_cudnn_attention: bool = True
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


@dataclass(frozen=True)
class Overlay:
    """One declared change to a validated config: `key` ("section.field") becomes `value`, or `value(old, cfg)`
    when it is a function of the current value and the config as the earlier overlays left it; `source` says who asked
    (a mode, a command-line flag). Every change a run makes to a YAML is one of these, applied by
    `apply_overlays`, which records it."""

    key: str
    value: Any
    source: str

    def new_value(self, old: Any, cfg: "ExperimentConfig") -> Any:
        return self.value(old, cfg) if callable(self.value) else self.value


def mode_overlays(mode: str, train_rows: int | None = None) -> list[Overlay]:
    """What each mode changes. Smoke mode shrinks sizes, lengths, beams and epochs only: each config's gradient
    accumulation, early stopping and step-based evaluation stay, the interval scaled to `train_rows` (the
    training file's rows) so that a smoke trial still evaluates at least twice per epoch."""
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "full":
        return []
    if mode == "quick":
        return [Overlay("training.num_train_epochs", 1, mode)]
    lim = SMOKE_LIMITS

    def at_most(limit):
        return lambda old, cfg: min(old, limit)

    def eval_steps(old, cfg):
        return smoke_eval_steps(old, train_rows, cfg.training.per_device_train_batch_size,
                                cfg.training.gradient_accumulation_steps)

    return [Overlay(key, value, mode) for key, value in (
        ("training.num_train_epochs", at_most(lim["num_train_epochs"])),
        ("training.per_device_train_batch_size", at_most(lim["train_batch"])),
        ("training.per_device_eval_batch_size", at_most(lim["eval_batch"])),
        ("training.eval_steps", eval_steps),
        ("training.learning_rate", lambda old, cfg: max(old, lim["min_learning_rate"])),
        ("training.warmup_ratio", at_most(0.05)),
        ("tokenizer.encoder_max_len", at_most(lim["encoder_max_len"])),
        ("tokenizer.decoder_max_len", at_most(lim["decoder_max_len"])),
        ("generation.num_beams", at_most(lim["num_beams"])),
        ("generation.max_length", at_most(lim["decoder_max_len"])),
        ("generation.min_length", at_most(5)),
        ("qlora.lora_rank", at_most(lim["lora_rank"])),
        ("qlora.lora_alpha", at_most(2 * lim["lora_rank"])),
    )]


def apply_overlays(cfg: ExperimentConfig, overlays: list[Overlay], keep: frozenset[str] = frozenset()
                   ) -> tuple[ExperimentConfig, list[str]]:
    """A new config with the overlays applied in order (keys in `keep` untouched: a search's sampled values),
    re-validated, and the list of what changed ("section.key: old -> new", with the source unless a mode)."""
    out = cfg.model_copy(deep=True)
    changes: list[str] = []
    for overlay in overlays:
        if overlay.key in keep:
            continue
        section, field = overlay.key.split(".")
        old = getattr(getattr(out, section), field)
        value = overlay.new_value(old, out)
        if value != old:
            setattr(getattr(out, section), field, value)
            changes.append(f"{overlay.key}: {old} -> {value}" + ("" if overlay.source in MODES else f" ({overlay.source})"))
    try:
        return ExperimentConfig.model_validate(out.model_dump()), changes
    except ValidationError as err:
        raise ConfigError(_format_validation_error(Path(f"{cfg.name} after {', '.join(changes)}"), err)) from None


def apply_mode(cfg: ExperimentConfig, mode: str, train_rows: int | None = None) -> tuple[ExperimentConfig, list[str]]:
    """The config as `mode` runs it, and what the mode changed (see mode_overlays)."""
    return apply_overlays(cfg, mode_overlays(mode, train_rows))


# ---------------------------------------------------------------------------------------------------
# The trial's config: the experiment plus what the driver decided for this machine. Ray carries it as
# plain data (params.json shows it); the trial validates it back into these types before anything runs.


class CallbackSpec(_Section):
    """A TrainerCallback the trial adds by import name (the tests' and benchmarks' extension point)."""

    factory: str = Field(pattern=r"^[\w.]+:\w+$")  # "module:name", a class or a factory function
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ModelLocation(_Section):
    model_path: str  # a folder or a hub id
    model_source: str  # "checkpoint:<id>" or "standin:<family>-tiny (for <id>)"


class Placement(_Section):
    """A packed trial's share of a GPU (trainables.plan)."""

    gpu: float = Field(gt=0, le=1)
    memory_cap_gib: float | None = None
    predicted_peak_gib: float | None = None
    predicted_trial_s: float | None = None
    card: str | None = None  # the card the plan was made for


class RunContext(_Section):
    """What the driver decided for this machine, shared by the trials of one run."""

    mode: Mode
    data_dir: str
    models: dict[str, ModelLocation]  # by model.checkpoint
    mode_changes: dict[str, list[str]] = Field(default_factory=dict)  # by experiment name
    torch_threads: int | None = None
    wandb: bool = False
    wandb_project: str | None = None
    placement: dict[str, Placement] = Field(default_factory=dict)  # by experiment name; empty: one GPU each
    callbacks: list[CallbackSpec] = Field(default_factory=list)
    environment: dict[str, Any] | None = None  # tests: a fake machine (GPU, bf16, Unsloth) for the settings decisions


class TrialConfig(_Section):
    """One trial: `{"experiment": ..., "run": ...}` as Ray passes it, validated again inside the trial."""

    experiment: ExperimentConfig
    run: RunContext

    @property
    def model(self) -> ModelLocation:
        return self.run.models[self.experiment.model.checkpoint]

    @property
    def mode_changes(self) -> list[str]:
        return self.run.mode_changes.get(self.experiment.name, [])

    @property
    def placement(self) -> Placement | None:
        return self.run.placement.get(self.experiment.name)

    @classmethod
    def from_ray(cls, config: dict[str, Any]) -> "TrialConfig":
        try:
            trial = cls.model_validate(config)
        except ValidationError as err:
            raise ConfigError(_format_validation_error(Path("the trial's config (params.json)"), err)) from None
        if trial.experiment.model.checkpoint not in trial.run.models:
            raise ConfigError(f"{trial.experiment.name}: no model location for {trial.experiment.model.checkpoint!r} "
                              "in the run's models table")
        return trial
