"""Experiment configs: the typed schema, loading a folder of YAMLs, and the run modes.

One YAML file in `search_spaces/` is one experiment. Everything here is validated before Ray or torch
is imported, so a broken file fails in well under a second with a message naming the file and the key.
This module knows nothing of Ray or torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from trainables.errors import UserError
from trainables.metrics import DEFAULT_TOKENIZATION, TOKENIZATIONS
from trainables.secrets import check_config_secrets

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
Architecture = Literal["mt5", "t5", "bart", "llama", "qwen2", "qwen3"]  # the checkpoint's config.model_type


def mode_of(metric: str) -> str:
    """Whether a metric is better high ("max") or low ("min": only the loss)."""
    return "min" if metric == "eval_loss" else "max"


class ConfigError(UserError, ValueError):
    """A config problem, phrased for the user: which file, which key, how to fix it."""


def _number_kind(annotation: Any) -> str | None:
    """"an integer" / "a number" for a whole-number / numeric field (None allowed or not), else None."""
    kinds = set(get_args(annotation) or (annotation,)) - {type(None)}
    if kinds == {int}:
        return "an integer"
    return "a number" if kinds and kinds <= {int, float} else None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info) -> Any:
        """Numbers as numbers: pydantic's lax mode would take `true` as 1 and the text "3" as 3, a typo or a
        quoted value the user never meant as that number."""
        kind = _number_kind(cls.model_fields[info.field_name].annotation)
        if kind and isinstance(value, bool):
            raise PydanticCustomError("strict_number", f"expected {kind}, not true/false")
        if kind and isinstance(value, str):
            hint = "; write it without quotes" if _is_number_text(value) else ""
            raise PydanticCustomError("strict_number", f"expected {kind}, not text{hint}")
        return value


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class ModelSection(_Section):
    checkpoint: str = Field(min_length=1, description="Hugging Face model id or local directory")
    architecture: Architecture


class TokenizerSection(_Section):
    encoder_max_len: int = Field(gt=0, le=4096)
    decoder_max_len: int = Field(gt=0, le=2048)
    input_prefix: str = ""
    special_tokens: list[str] = Field(default_factory=lambda: list(DEFAULT_SPECIAL_TOKENS))


class PromptSection(_Section):
    """How a decoder-only model's prompt is built from the dialogue (llama, qwen2, qwen3 only;
    trainables/trial/families/causal_lm/prompt.py). The input prefix (tokenizer.input_prefix) goes right before
    the dialogue in either template."""

    # true: the tokenizer's chat template where it has one, else `template`; false: always `template`;
    # a string: a Jinja chat template of your own (rendered with messages, add_generation_prompt, bos_token)
    chat_template: bool | str = True
    system: str | None = None  # a system message: the chat template's first message; `{system}` in `template`
    template: str = "### 대화:\n{dialogue}\n\n### 요약:\n"  # the plain template: `{dialogue}` exactly once

    @field_validator("template")
    @classmethod
    def _has_dialogue(cls, value: str) -> str:
        if value.count("{dialogue}") != 1:
            raise ValueError("the template must contain {dialogue} exactly once (where the dialogue goes)")
        return value

    @field_validator("chat_template")
    @classmethod
    def _template_text(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and not value.strip():
            raise ValueError("an empty chat template; use true (the tokenizer's), false (prompt.template) or a Jinja template")
        return value


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
    # configs of one grid must agree on it (trainables.driver.launch checks), since Tune ranks them all by one metric.
    best_metric: Metric = "competition_score"


class SpeedSection(_Section):
    """The speed layer (trainables/trial/speed/); `speed: off` (or `enabled: false`) is the plain path (the family's
    own Trainer), which never loads the layer."""

    enabled: bool = True
    fast_eval: bool = True  # generate from a merged half-precision copy, longest dialogues first, larger batches
    micro_batch: bool = True  # larger micro-batch, less accumulation, same effective batch (GPU only)
    # cross-entropy in fp32 chunks of rows, no full-size fp32 logits (trainables/trial/speed/losses.py). Off by default:
    # measured on an H100 it did not lower the mT5 configs' peak (16.47 GiB against 16.6 plain; activations fill
    # the cap first), so it bought nothing (BENCHMARKS.md)
    chunked_loss: bool = False
    tf32: bool = True
    # PyTorch's attention (SDPA) without its cuDNN backend: on an H100 (torch 2.11) cuDNN attention spent ~7 ms of
    # CPU per call setting up each new shape, most of a training step and of every decoding step (BENCHMARKS.md)
    no_cudnn_attention: bool = True
    memory_gib: float = Field(default=20.0, gt=0)  # GPU memory cap per trial while speed-ups are on
    max_eval_rows: int = Field(default=256, gt=0)  # most dialogues per generation batch


# An experiment's name (the YAML's `name:`, the command line's --name) is one plain folder name: no path, no `..`.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NAME_MAX_LENGTH = 100


class ExperimentConfig(_Section):
    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)
    description: str = ""
    model: ModelSection
    tokenizer: TokenizerSection
    training: TrainingSection
    generation: GenerationSection
    qlora: QLoraSection
    prompt: PromptSection | None = None  # decoder-only models only
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


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does: `1e-4` (no dot) is a float, not the string "1e-4"
    (YAML 1.1's rule, which a schema of strict numbers would refuse)."""


_Loader.add_implicit_resolver(  # copies SafeLoader's table first: yaml.safe_load elsewhere is unchanged
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def _duplicate_key(node: yaml.Node, where: str = "") -> tuple[str, int, int] | None:
    """The first key written twice in one mapping of the document ("section.key", first line, second line), which
    yaml.safe_load would silently resolve to the last value."""
    if isinstance(node, yaml.SequenceNode):
        return next((d for i, v in enumerate(node.value) if (d := _duplicate_key(v, f"{where}[{i}]"))), None)
    if not isinstance(node, yaml.MappingNode):
        return None
    seen: dict[str, int] = {}
    for key, value in node.value:
        name = str(key.value) if isinstance(key, yaml.ScalarNode) else None
        if name is not None and name in seen:
            return f"{where}.{name}" if where else name, seen[name], key.start_mark.line + 1
        if name is not None:
            seen[name] = key.start_mark.line + 1
        found = _duplicate_key(value, f"{where}.{name}" if where else str(name))
        if found:
            return found
    return None


def _load_yaml_text(text: str, path: Path) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        duplicate = _duplicate_key(node) if node is not None else None
        if duplicate:
            key, first, second = duplicate
            raise ConfigError(f"{path}: {key} is written twice (lines {first} and {second}); keep one, since YAML "
                              "would silently take the last")
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: YAML syntax error{at}: {getattr(err, 'problem', err)}") from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict[str, Any]:
    """The raw mapping of one YAML file (safe loader only), with a one-line error for unreadable files, a key
    written twice, and a secret pasted into a value (trainables.secrets: it would be copied into every results
    file). Every YAML of a run is read here: the grid's, a search's and its `base:`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    raw = _load_yaml_text(text, path)
    if raw is None:
        raise ConfigError(f"{path}: file is empty; write an experiment (sections model:, tokenizer:, training:, "
                          "generation:, qlora:; see search_spaces/README.md) or delete the file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, training:, ...), got {type(raw).__name__}")
    check_config_secrets(raw, path)
    raw.setdefault("name", path.stem)
    return raw


def validate_experiment(raw: dict[str, Any], path: Path) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(Path(path), err)) from None


# Search dimensions (trainables/driver/search.py samples them): a setting written as a one-key mapping such as
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
# Static checks that need no model weights: the model family's (LoRA target names, precision traps).


def static_problems(cfg: ExperimentConfig) -> tuple[list[str], list[str]]:
    """(errors, warnings) that can be known from the config alone; the config's model family knows them
    (trainables.trial.families: its static half imports no torch)."""
    from trainables.trial.families import family_of

    return family_of(cfg.model.architecture).static_problems(cfg)


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
        # alpha first, scaled as the rank is capped: LoRA's update is scaled by alpha / rank, which smoke keeps
        ("qlora.lora_alpha", lambda old, cfg: max(1, round(old * min(cfg.qlora.lora_rank, lim["lora_rank"])
                                                          / cfg.qlora.lora_rank))),
        ("qlora.lora_rank", at_most(lim["lora_rank"])),
    )]


# Settings a mode changes together, so it leaves all of a group as written when a search samples one of them:
# smoke scales lora_alpha with its cap on lora_rank, and a sampled rank is used as sampled (a capped alpha under an
# uncapped rank would change the alpha / rank scale the search explores, and record another one than ran).
LINKED_SETTINGS = (frozenset({"qlora.lora_rank", "qlora.lora_alpha"}),)


def with_linked(keys: frozenset[str]) -> frozenset[str]:
    """`keys` plus every setting LINKED_SETTINGS ties to one of them."""
    return keys.union(*(group for group in LINKED_SETTINGS if group & keys))


def apply_overlays(cfg: ExperimentConfig, overlays: list[Overlay], keep: frozenset[str] = frozenset()
                   ) -> tuple[ExperimentConfig, list[str]]:
    """A new config with the overlays applied in order (keys in `keep` untouched: a search's sampled values, and
    the settings LINKED_SETTINGS ties to them), re-validated, and the list of what changed ("section.key: old -> new",
    with the source unless a mode)."""
    out = cfg.model_copy(deep=True)
    changes: list[str] = []
    keep = with_linked(keep)
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
    """A packed trial's share of a GPU (trainables.driver.plan)."""

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
