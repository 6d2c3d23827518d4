"""Building, running and restoring the Tune experiment: one grid point per experiment YAML.

Each grid point carries the experiment's whole validated config, so every trial's params.json holds what
ran and `ExperimentAnalysis.dataframe()` has a column per setting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from typing import Any

from trainables.config import ExperimentConfig, RunContext, mode_of
from trainables.layout import MARKER, is_uri, read_marker, storage_location  # noqa: F401  (grid.read_marker etc. too)

log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "main7"


@dataclass
class GridPlan:
    """Everything the driver decided before Ray starts."""

    experiments: list[ExperimentConfig]  # validated, the mode's and the command line's overlays applied
    run: RunContext  # the trials' shared `run` section (models table, data folder, mode, ...)
    storage_path: Path | str  # a local folder (absolute), or a URI such as s3://bucket/ray_results, passed to Tune as is
    name: str
    use_gpu: bool
    max_concurrent: int | None
    metric: str = "competition_score"
    max_failures: int = 2
    keep_checkpoints: int = 1  # the N best by metric; Ray always keeps the latest too
    search: dict[str, Any] | None = None  # a search (trainables.driver.search): its config file, samples, dimensions


def experiment_location(plan: "GridPlan") -> str:
    """The experiment folder: `<storage>/<name>`, a local path or a URI."""
    return f"{storage_location(plan.storage_path).rstrip('/')}/{plan.name}"


def experiment_name(mode: str) -> str:
    """A new default name: timestamp plus a random suffix, so two runs started in the same second differ."""
    import os

    return f"{EXPERIMENT_PREFIX}-{mode}-{datetime.now():%Y%m%d-%H%M%S}-{os.urandom(3).hex()}"


def trial_resources(use_gpu: bool) -> dict[str, float]:
    # One GPU per trial: on one card the trials run one after another, on N cards N side by side.
    return {"cpu": 1, "gpu": 1} if use_gpu else {"cpu": 1}


def _planned_resources(config):
    """Per trial: the GPU fraction the plan gave it (run.placement), else one GPU (trainables/driver/packing.py)."""
    from ray.tune import PlacementGroupFactory

    from trainables.driver.packing import trial_resources as planned

    wanted = planned(config)
    return PlacementGroupFactory([{"CPU": wanted.get("cpu", 1), "GPU": wanted.get("gpu", 0)}])


def _trial_dirname(trial) -> str:
    return f"{trial.config['experiment']['name']}_{trial.trial_id}"


def _trainable(use_gpu: bool, trainable=None):
    from ray import tune

    if trainable is None:
        from trainables.trial.entry import train_summarizer as trainable

    # GPU trials: a function of each trial's config, so packed trials ask for their planned fraction of a GPU
    return tune.with_resources(trainable, _planned_resources if use_gpu else trial_resources(use_gpu))


def build_tuner(plan: GridPlan, trainable=None, param_space=None, **search_options):
    """The grid's Tuner. `trainable` replaces train_summarizer (tests schedule trivial trials with it).
    A search (trainables.driver.search) passes its own param_space and TuneConfig options (search_alg, scheduler,
    num_samples, metric, mode); its search_alg limits concurrency itself."""
    from ray import tune

    from trainables.driver.overrun import ReplaceOverrunTrials
    from trainables.results.summaries import progress_reporter, run_callbacks

    return tune.Tuner(
        _trainable(plan.use_gpu, trainable),
        param_space=param_space or {"experiment": tune.grid_search([e.model_dump() for e in plan.experiments]),
                                    "run": plan.run.model_dump()},  # plain data: params.json shows what ran
        tune_config=tune.TuneConfig(
            max_concurrent_trials=None if "search_alg" in search_options else plan.max_concurrent,
            **search_options,
            trial_dirname_creator=_trial_dirname,
            trial_name_creator=_trial_dirname,  # the progress table and W&B runs show the config name
            # GPU runs: each trial its own process, so its GPU memory is freed when it ends. CPU runs reuse a finished
            # trial's process for the next trial (no second start and import, ~10 s a trial); each trial restarts
            # its memory peaks (trial/callbacks.reset_peak_memory)
            reuse_actors=not plan.use_gpu,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=storage_location(plan.storage_path),
            # live summary (and W&B when asked) as trials report; our trial table instead of Ray's default; a packed
            # trial that overran its share retries on a whole GPU
            callbacks=[*run_callbacks(experiment_location(plan), plan.metric, plan.run), ReplaceOverrunTrials()],
            progress_reporter=progress_reporter(plan.metric, (plan.search or {}).get("dimensions")),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=plan.keep_checkpoints,
                checkpoint_score_attribute=plan.metric,
                checkpoint_score_order=mode_of(plan.metric),
            ),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            verbose=1,
        ),
    )


def write_marker(experiment_dir: Path | str, plan: GridPlan) -> None:
    import json

    text = json.dumps(
        {"name": plan.name, "mode": plan.run.mode, "use_gpu": plan.use_gpu, "metric": plan.metric,
         "experiments": [e.name for e in plan.experiments], "data_dir": plan.run.data_dir,
         "created": datetime.now().isoformat(timespec="seconds"),
         **({"kind": "search", **plan.search} if plan.search else {})},
        indent=1)
    if is_uri(experiment_dir):  # shared storage (s3://, gs://, ...): through pyarrow.fs, as Tune writes there
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(str(experiment_dir))
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path.rstrip('/')}/{MARKER}") as out:
            out.write(text.encode())
        return
    experiment_dir = Path(experiment_dir)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    (experiment_dir / MARKER).write_text(text)


def restore_tuner(experiment_dir: Path, marker: dict[str, Any] | None = None):
    """The interrupted experiment's Tuner; `marker`: its MARKER when the caller has read it already."""
    from ray import tune

    # process.configure_cli already set RAY_AIR_NEW_OUTPUT=0 (the restored RunConfig brings our progress reporter
    # back) and WANDB_MODE=offline without a key (the unpickled W&B callback checks for one)
    marker = marker if marker is not None else read_marker(experiment_dir) or {}
    # a search's searcher and scheduler state come back with the Tuner; its trials run the grid's trainable
    return tune.Tuner.restore(
        storage_location(experiment_dir), trainable=_trainable(marker.get("use_gpu", False)),
        resume_errored=True, restart_errored=False,
    )
