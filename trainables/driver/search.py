"""A hyperparameter search around one experiment config: Optuna's TPE through Ray Tune's OptunaSearch, ASHA
stopping poor trials at their evaluations, resumable like the grid.

A search YAML is an experiment YAML in which some settings are search dimensions instead of values:

    base: 01_baseline_kobart_rtx3090        # optional: start from this config (a name or a path)
    training:
      learning_rate: {loguniform: [1.0e-5, 1.0e-3]}   # float, sampled on a log scale; both ends > 0
      warmup_ratio: {uniform: [0.0, 0.2]}             # float, uniform
    qlora:
      lora_rank: {choice: [16, 32, 64]}               # one of the listed values (numbers, strings, booleans)
      lora_dropout: {uniform: [0.0, 0.2]}
    generation:
      num_beams: {integer: [2, 6]}                    # integer, both ends included

Everything the driver can know is checked before Ray starts (trainables.driver.launch's checks, plus here: each
dimension's form, that its key is a setting of the schema that takes that kind of value, and the config with
every combination of the dimensions' ends and choices, after the mode is applied). Each trial validates its
sampled config again with the same schema before it trains (`trainables.trial.entry.train_summarizer`, the grid's trainable).

The mode's limits (smoke: epochs, lengths, batch, rank, a learning-rate floor) apply to the fixed values only:
a searched setting is used as sampled, or the search would compare trials that all ran the same value.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

from trainables.config import (
    DIMENSION_KINDS, ConfigError, ExperimentConfig, Overlay, apply_overlays, is_dimension, mode_of, mode_overlays,
    read_yaml, static_problems, validate_experiment, with_linked,
)
from trainables.data import read_split
from trainables.layout import STOPPED_EARLY

log = logging.getLogger("tune_main7")

SEARCH_FOLDER = "search"  # search_spaces/search/: the grid reads search_spaces/*.yaml only, never this folder
# ASHA: a trial may be stopped from its first evaluation on; at each rung (evaluations 1, 3, 9, ...) only the top
# third of the trials that reached it go on. max_t only caps; a trial's own epochs end it first.
ASHA_GRACE_PERIOD = 1
ASHA_REDUCTION_FACTOR = 3
ASHA_MAX_T = 1000
MAX_CORNERS = 512  # combinations of the dimensions' ends checked before Ray starts; beyond, each dimension alone


class SearchError(ConfigError):
    """A search-space or search-command problem (a ConfigError: one line, exit 2)."""


@dataclass
class Dimension:
    section: str
    key: str
    kind: str  # one of DIMENSION_KINDS
    values: list[Any]  # [low, high] for ranges, the choices for `choice`

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    def ends(self) -> list[Any]:
        """What is checked before Ray starts: both ends of a range, every choice."""
        return list(self.values)

    def describe(self) -> str:
        return f"{self.kind} {self.values}"

    def distribution(self):
        """Optuna's distribution for this dimension (OptunaSearch gets them directly: Tune's own conversion of a
        param_space flattens every key, and the run's models table is keyed by hub ids such as "org/model")."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(self.values))
        low, high = self.values
        if self.kind == "integer":
            return IntDistribution(low, high)  # both ends included
        return FloatDistribution(low, high, log=self.kind == "loguniform")

    @property
    def config_key(self) -> str:
        """Where the sampled value goes in the trial config (OptunaSearch unflattens "/")."""
        return f"experiment/{self.section}/{self.key}"


@dataclass
class SearchSpace:
    path: Path
    raw: dict[str, Any]  # the experiment mapping with the dimensions in it (base merged in)
    dimensions: list[Dimension]
    default: bool = False  # the config had no dimensions: DEFAULT_DIMENSIONS around its values

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    def with_values(self, values: dict[str, Any]) -> dict[str, Any]:
        raw = copy.deepcopy(self.raw)
        for dim in self.dimensions:
            raw[dim.section][dim.key] = values[dim.name]
        return raw


# ---------------------------------------------------------------------------------------------------
# Reading and checking a search YAML


def resolve_config(target: str | None, search_space_dir: Path) -> Path:
    """A config name (search_spaces/search/NAME.yaml, then search_spaces/NAME.yaml) or a YAML path."""
    if not target:
        raise SearchError("search: name the config to search around: `tune_main7.py search <config name or YAML> --samples N`")
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SearchError(f"search: {target}: no such file; pass a YAML path or a config name")
        return path
    search_space_dir = Path(search_space_dir)
    for folder in (search_space_dir / SEARCH_FOLDER, search_space_dir):
        for suffix in (".yaml", ".yml"):
            if (folder / f"{target}{suffix}").is_file():
                return folder / f"{target}{suffix}"
    known = sorted({p.stem for d in (search_space_dir / SEARCH_FOLDER, search_space_dir) if d.is_dir()
                    for p in [*d.glob("*.yaml"), *d.glob("*.yml")]})
    raise SearchError(f"search: unknown config {target!r}; use a YAML path or one of: {', '.join(known) or '(none)'}")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, section by section (a dimension replaces the base's value)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and not is_dimension(value) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _field(section: str, key: str):
    """The schema's field for `section.key`, or None."""
    section_field = ExperimentConfig.model_fields.get(section)
    if section_field is None:
        return None
    model = section_field.annotation
    fields = getattr(model, "model_fields", None)
    return fields.get(key) if fields else None


def _types_of(field) -> set[type]:
    annotation = field.annotation
    args = get_args(annotation)
    return {a for a in (args or (annotation,)) if isinstance(a, type)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dimension(path: Path, section: str, key: str, spec: dict[str, Any]) -> Dimension:
    where = f"{path}: {section}.{key}"
    kinds = [k for k in spec if k in DIMENSION_KINDS]
    if len(spec) != 1 or len(kinds) != 1:
        raise SearchError(f"{where}: a search dimension is one of {{{'|'.join(DIMENSION_KINDS)}: ...}} alone, got "
                          f"{sorted(spec)}")
    kind = kinds[0]
    values = spec[kind]
    field = _field(section, key)
    if field is None:
        known = sorted(getattr(ExperimentConfig.model_fields[section].annotation, "model_fields", {})) \
            if section in ExperimentConfig.model_fields else []
        hint = f"; settings of {section}: {', '.join(known)}" if known else \
            f"; sections: {', '.join(ExperimentConfig.model_fields)}"
        raise SearchError(f"{where}: no such setting, so it can't be searched{hint}")
    types = _types_of(field)
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise SearchError(f"{where}: choice needs a non-empty list of values, e.g. {{choice: [16, 32, 64]}}")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise SearchError(f"{where}: choice values must be numbers, strings or booleans, got {values!r}")
        return Dimension(section, key, kind, values)
    if not isinstance(values, list) or len(values) != 2 or not all(_is_number(v) for v in values):
        raise SearchError(f"{where}: {kind} needs [low, high] (two numbers), got {values!r}")
    low, high = values
    if not low < high:
        raise SearchError(f"{where}: {kind} range [{low}, {high}] is empty; the low end must be below the high end")
    if kind == "loguniform" and low <= 0:
        raise SearchError(f"{where}: loguniform range [{low}, {high}] includes zero or less; a log scale needs "
                          "both ends above 0 (use uniform to include 0)")
    if kind == "integer":
        if not all(isinstance(v, int) for v in values):
            raise SearchError(f"{where}: integer needs whole-number ends, got {values!r}; use uniform for a float range")
        if int not in types:
            raise SearchError(f"{where}: this setting is not a whole number; use uniform or choice")
        return Dimension(section, key, kind, [int(low), int(high)])
    if float not in types:
        what = "a whole number: use {integer: [low, high]}" if int in types else "not a number: use choice"
        raise SearchError(f"{where}: {kind} samples floats, and this setting is {what}")
    return Dimension(section, key, kind, [float(low), float(high)])


def read_search_space(path: Path, search_space_dir: Path) -> SearchSpace:
    """Parse a search YAML (merging its `base:` config) and check each dimension's form and key."""
    path = Path(path)
    raw = read_yaml(path)
    explicit_name = "name" in raw and raw["name"] != path.stem
    base = raw.pop("base", None)
    if base is not None:
        if not isinstance(base, str):
            raise SearchError(f"{path}: base: expected a config name or YAML path, got {base!r}")
        beside = path.parent / base
        base_path = beside if beside.is_file() else resolve_config(base, search_space_dir)
        if base_path.resolve() == path.resolve():
            raise SearchError(f"{path}: base: names this file itself")
        base_raw = read_yaml(base_path)
        base_raw.pop("base", None)
        raw = _merge(base_raw, raw)
        if not explicit_name:
            raw["name"] = path.stem
    dimensions: list[Dimension] = []
    for section, values in raw.items():
        if is_dimension(values):
            raise SearchError(f"{path}: {section}: a search dimension must be on one setting, not on a whole section")
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if is_dimension(value):
                dimensions.append(_dimension(path, section, key, value))
            elif isinstance(value, dict) and len(value) == 1 and _field(section, key) is not None:
                kind = next(iter(value))
                raise SearchError(f"{path}: {section}.{key}: {kind!r} is not a kind of search dimension; use one of "
                                  f"{', '.join(DIMENSION_KINDS)}")
    if not dimensions:  # a plain config (one of the grid's): the default space around its values
        return SearchSpace(path, raw, default_dimensions(path, raw), default=True)
    return SearchSpace(path, raw, dimensions)


DEFAULT_DIMENSIONS = ("training.learning_rate: loguniform, a tenth to ten times the config's",
                      "training.warmup_ratio: uniform, 0 to twice the config's (at least 0.2, at most 0.5)",
                      "qlora.lora_rank: choice, half, once and twice the config's (when it trains with LoRA)")


def default_dimensions(path: Path, raw: dict[str, Any]) -> list[Dimension]:
    """DEFAULT_DIMENSIONS, around the config's own values (the schema's defaults where it sets none)."""
    cfg = validate_experiment(raw, path)
    lr, warmup, rank = cfg.training.learning_rate, cfg.training.warmup_ratio, cfg.qlora.lora_rank
    dims = [Dimension("training", "learning_rate", "loguniform", [float(f"{lr / 10:.3g}"), min(float(f"{lr * 10:.3g}"), 0.5)]),
            Dimension("training", "warmup_ratio", "uniform", [0.0, min(max(0.2, 2 * warmup), 0.5)])]
    if cfg.qlora.use_qlora:
        dims.append(Dimension("qlora", "lora_rank", "choice", sorted({max(1, rank // 2), rank, min(2 * rank, 1024)})))
    return dims


def _corners(space: SearchSpace) -> list[dict[str, Any]]:
    """Every combination of the dimensions' ends and choices (or, when there are too many, each dimension's ends
    with the others at their first end)."""
    names = [d.name for d in space.dimensions]
    ends = [d.ends() for d in space.dimensions]
    if math.prod(len(e) for e in ends) <= MAX_CORNERS:
        return [dict(zip(names, combo)) for combo in itertools.product(*ends)]
    first = {n: e[0] for n, e in zip(names, ends)}
    return [first] + [{**first, n: v} for n, e in zip(names, ends) for v in e[1:]]


def _one_line(message: str) -> str:
    lines = [line.strip(" -") for line in message.splitlines() if line.strip()]
    return "; ".join(lines)


def sampled_experiment(raw: dict[str, Any], path: Path, mode: str, searched: list[Dimension],
                       train_rows: int | None = None):
    """Validate one sampled config like a fixed one and apply the mode to its fixed values (`train_rows`: the
    training file's rows, which smoke's evaluation interval is scaled to); return (the config as written, the
    config as the mode runs it, what the mode changed, warnings)."""
    cfg = validate_experiment(raw, path)
    errors, warnings = static_problems(cfg)
    if errors:
        raise ConfigError("; ".join(errors))
    # a searched value is used as sampled, whatever the mode's limits (and so are the settings linked to it)
    exp, changes = apply_overlays(cfg, mode_overlays(mode, train_rows), keep=searched_keys(searched))
    return cfg, exp, changes, warnings


def searched_keys(searched: list[Dimension]) -> frozenset[str]:
    return frozenset(d.name for d in searched)


def check_search_space(space: SearchSpace, mode: str, train_rows: int | None = None
                       ) -> tuple[ExperimentConfig, ExperimentConfig, list[str], list[str]]:
    """Every combination of ends must validate, the mode applied; return the base experiment (the first
    combination's values in the searched places) as written and as the mode runs it, the mode's changes and
    the warnings. With `train_rows`, the evaluation interval as the mode runs it is the shortest of all the
    combinations' (a searched batch size changes the steps per epoch: each sampled trial evaluates as often)."""
    result, intervals = None, []
    for values in _corners(space):
        try:
            checked = sampled_experiment(space.with_values(values), space.path, mode, space.dimensions, train_rows)
        except ConfigError as err:
            assigned = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise SearchError(f"{space.path}: with {assigned}: {_one_line(str(err)).removeprefix(f'{space.path}: ')}") \
                from None
        result = result or checked
        intervals.append(checked[1].training.eval_steps)
    if train_rows is not None and result[1].training.eval_steps is not None:
        result[1].training.eval_steps = min(intervals)
    return result


# ---------------------------------------------------------------------------------------------------
# The driver: Optuna + ASHA, through the grid's Tuner building blocks


def _recording_asha(metric: str, **kwargs):
    """ASHA that also writes STOPPED_EARLY into the folder of each trial it stops before that trial's last
    evaluation, so that `report` tells "stopped early" from "finished" (Tune calls both TERMINATED)."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP and not _last_evaluation(trial, result):
                _write_stopped_early(trial, result, self._metric)
            return decision

    return RecordingASHA(metric=metric, mode=mode_of(metric), **kwargs)


def _last_evaluation(trial, result: dict[str, Any]) -> bool:
    epochs = trial.config.get("experiment", {}).get("training", {}).get("num_train_epochs")
    epoch = result.get("epoch")
    return epochs is not None and epoch is not None and float(epoch) >= float(epochs) - 1e-6


def _write_stopped_early(trial, result: dict[str, Any], metric: str) -> None:
    record = {"stopped_at_iteration": result.get("training_iteration"), "epoch": result.get("epoch"),
              "step": result.get("step"), metric: result.get(metric), "by": "ASHA",
              "time": datetime.now().isoformat(timespec="seconds")}
    try:
        folder = Path(trial.path)
        if folder.is_dir():
            (folder / STOPPED_EARLY).write_text(json.dumps(record, indent=1))
    except Exception as err:  # a record must never stop the search
        log.warning("could not record that %s stopped early: %s", trial.trial_id, err)


def require_optuna() -> None:
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise SearchError("search needs optuna, which is not installed: pip install -e '.[search]'")


def search_algorithm(space: SearchSpace, metric: str, samples: int, max_concurrent: int, seed: int):
    """OptunaSearch (TPE, seeded) over the space's dimensions, wrapped in a ConcurrencyLimiter: at most
    `max_concurrent` trials at once."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    # TPE samples at random until it has seen n_startup_trials results; few samples need a short start.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, samples // 3)))
    searcher = OptunaSearch({d.config_key: d.distribution() for d in space.dimensions}, metric=metric,
                            mode=mode_of(metric), sampler=sampler)
    return ConcurrencyLimiter(searcher, max_concurrent=max(1, max_concurrent))


def search_name(space: SearchSpace, mode: str) -> str:
    import os

    return f"search-{space.name}-{mode}-{datetime.now():%Y%m%d-%H%M%S}-{os.urandom(3).hex()}"  # never two alike


def check_samples(samples: int | None) -> int:
    if samples is None:
        raise SearchError("search: --samples N is required (how many configs to sample, e.g. --samples 20)")
    if samples < 1:
        raise SearchError(f"search: --samples {samples}: sample at least 1 config")
    return samples


def search_lines(space: SearchSpace, written: ExperimentConfig, running: ExperimentConfig, mode: str) -> list[str]:
    """What the search explores, for the console: the default space when the config had none, each dimension,
    and the settings the mode left as written because they go with a searched one (config.LINKED_SETTINGS)."""
    lines = []
    if space.default:
        lines.append(f"search: {space.path} has no search dimensions, so it searches the default space around its "
                     "values: " + "; ".join(DEFAULT_DIMENSIONS))
    lines += [f"search: {d.name} ~ {d.describe()}" for d in space.dimensions]
    changed_by_mode = {o.key for o in mode_overlays(mode)}
    for name in sorted(with_linked(searched_keys(space.dimensions)) - searched_keys(space.dimensions)):
        if name in changed_by_mode:
            section, key = name.split(".")
            lines.append(f"search: {name} = {getattr(getattr(running, section), key)} as written, not scaled by --mode "
                         f"{mode}: it goes with a searched setting, used as sampled (LoRA's scale is alpha / rank)")
    return lines


def run_search(args) -> int:
    from trainables.driver.grid import build_tuner
    from trainables.arguments import replaced
    from trainables.driver.launch import UsageError, plan_run, run_grid

    if args.only:
        raise UsageError("search: --only selects grid configs; name the one config to search around instead")
    samples = check_samples(args.samples)
    require_optuna()
    space = read_search_space(resolve_config(args.target, Path(args.search_space)), Path(args.search_space))
    train_rows = len(read_split(Path(args.data_dir), "train", warn=False).frame)  # smoke's evaluation interval
    base, running, _, warnings = check_search_space(space, args.mode, train_rows)
    args = replaced(args, name=args.name or search_name(space, args.mode))
    # the interval every sampled batch size evaluates at least twice an epoch with (smoke; others keep the config's)
    interval = Overlay("training.eval_steps", running.training.eval_steps, args.mode)
    plan = plan_run(args, prepared=([base], warnings, searched_keys(space.dimensions), [interval]))
    placed = plan.run.placement.get(space.name)
    if plan.use_gpu and placed and placed.gpu < 1 and not args.max_concurrent:
        # The packing plan fits several of this config on one card (forecast for its fixed values, the searched
        # ones at their first end; a sampled trial past its memory cap backs off its batch like any OOM).
        from trainables.driver.launch import count_local_gpus

        plan.max_concurrent = max(1, int(count_local_gpus() / placed.gpu))
    dimensions = {d.name: d.describe() for d in space.dimensions}
    plan.search = {"config": str(space.path), "samples": samples, "dimensions": dimensions,
                   "kinds": {d.name: d.kind for d in space.dimensions}, "default_space": space.default}
    for line in search_lines(space, base, plan.experiments[0], args.mode):
        print(line, flush=True)

    def make_tuner(plan):

        # The fixed values; OptunaSearch's samples are merged over the searched ones (here their first ends).
        param_space = {"experiment": plan.experiments[0].model_dump(), "run": plan.run.model_dump()}
        seed = base.training.seed if "training.seed" not in dimensions else 0
        return build_tuner(
            plan, param_space=param_space,  # the grid's trainable: it validates the sampled config again
            search_alg=search_algorithm(space, plan.metric, samples, plan.max_concurrent or 1, seed),
            scheduler=_recording_asha(plan.metric, time_attr="training_iteration", grace_period=ASHA_GRACE_PERIOD,
                                      reduction_factor=ASHA_REDUCTION_FACTOR, max_t=ASHA_MAX_T),
            num_samples=samples,
        )

    return run_grid(args, plan, make_tuner)
