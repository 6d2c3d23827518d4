"""Building, running and restoring the Tune experiment: one grid point per experiment YAML.

Each grid point carries the experiment's whole validated config, so every trial's params.json holds what
ran and `ExperimentAnalysis.dataframe()` has a column per setting.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "main7"
MARKER = "tune_main7.json"  # written into our experiment folders, so --resume can tell ours from others


@dataclass
class GridPlan:
    """Everything the driver decided before Ray starts."""

    experiments: list[dict[str, Any]]  # validated, mode-applied experiment dicts
    run: dict[str, Any]  # the trials' shared `run` section (models table, data folder, mode, ...)
    storage_path: Path
    name: str
    use_gpu: bool
    max_concurrent: int | None
    metric: str = "competition_score"
    max_failures: int = 2
    keep_checkpoints: int = 2


def experiment_name(mode: str) -> str:
    return f"{EXPERIMENT_PREFIX}-{mode}-{datetime.now():%Y%m%d-%H%M%S}"


def trial_resources(use_gpu: bool) -> dict[str, float]:
    # One GPU per trial: on one card the trials run one after another, on N cards N side by side.
    return {"cpu": 1, "gpu": 1} if use_gpu else {"cpu": 1}


def _trial_dirname(trial) -> str:
    return f"{trial.config['experiment']['name']}_{trial.trial_id}"


def _trainable(use_gpu: bool):
    from ray import tune

    from trainables.seq2seq import train_summarizer

    return tune.with_resources(train_summarizer, trial_resources(use_gpu))


def build_tuner(plan: GridPlan):
    from ray import tune

    return tune.Tuner(
        _trainable(plan.use_gpu),
        param_space={"experiment": tune.grid_search(plan.experiments), "run": plan.run},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=plan.max_concurrent,
            trial_dirname_creator=_trial_dirname,
            reuse_actors=False,  # each trial its own process: GPU memory is freed between trials
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=str(plan.storage_path.resolve()),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=plan.keep_checkpoints,
                checkpoint_score_attribute=plan.metric,
                checkpoint_score_order="min" if plan.metric == "eval_loss" else "max",
            ),
            failure_config=tune.FailureConfig(max_failures=plan.max_failures),
            verbose=1,
        ),
    )


def write_marker(experiment_dir: Path, plan: GridPlan) -> None:
    import json

    experiment_dir.mkdir(parents=True, exist_ok=True)
    (experiment_dir / MARKER).write_text(json.dumps(
        {"name": plan.name, "mode": plan.run["mode"], "use_gpu": plan.use_gpu, "metric": plan.metric,
         "experiments": [e["name"] for e in plan.experiments], "created": datetime.now().isoformat(timespec="seconds")},
        indent=1))


def read_marker(experiment_dir: Path) -> dict[str, Any] | None:
    import json

    marker = Path(experiment_dir) / MARKER
    return json.loads(marker.read_text()) if marker.exists() else None


def restore_tuner(experiment_dir: Path):
    from ray import tune

    marker = read_marker(experiment_dir) or {}
    return tune.Tuner.restore(
        str(Path(experiment_dir).resolve()), trainable=_trainable(marker.get("use_gpu", False)),
        resume_errored=True, restart_errored=False,
    )
