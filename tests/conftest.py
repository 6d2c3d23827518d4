"""Shared fixtures: the repo's paths, a stand-in cache, and one smoke-grid run reused by every test that
only reads its results (a grid costs ~2 minutes on 2 cores; each fresh trial process ~8 s of imports)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python tune_main7.py ARGS` as a user would; returns the finished process (output captured)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "tune_main7.py"), *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def write_sample(folder: Path, **rows: int) -> Path:
    """The first `rows[split]` rows of each named split of the shipped sample (data/<split>.csv), written as
    `folder`/<split>.csv: `write_sample(d, train=16, dev=4)`."""
    import pandas as pd

    for split, n in rows.items():
        pd.read_csv(ROOT / "data" / f"{split}.csv", dtype=str).head(n).to_csv(Path(folder) / f"{split}.csv", index=False)
    return Path(folder)


@pytest.fixture(scope="session")
def standin_cache(tmp_path_factory) -> Path:
    """One stand-in cache for the whole session (stand-ins are rebuilt only when data changes)."""
    return tmp_path_factory.mktemp("standins")


@pytest.fixture(scope="session")
def smoke_grid(tmp_path_factory, standin_cache) -> tuple[Path, subprocess.CompletedProcess]:
    """The seven-trial smoke grid, run once through the real command line."""
    storage = tmp_path_factory.mktemp("ray_results")
    proc = run_cli("--mode", "smoke", "--storage-path", str(storage), "--name", "smoke-grid",
                   "--cache-dir", str(standin_cache))
    return storage / "smoke-grid", proc


def set_fields(section, **values) -> None:
    """Change fields of a typed config section in place (tests shrink sizes; the trial re-validates)."""
    for key, value in values.items():
        if not hasattr(section, key):
            raise AttributeError(f"{type(section).__name__} has no field {key!r}")
        setattr(section, key, value)


def toy_plan(names: list[str], storage_path, name: str, run_extra: dict | None = None, **plan_fields):
    """(GridPlan, param_space) for scheduling tests with trivial trainables: experiments named `names` (a shipped
    config renamed, so whatever reads a trial's config finds every field), and a param_space whose `run` also
    carries `run_extra` for the toy trials. Pass both to grid.build_tuner(plan, trainable, param_space=...)."""
    from ray import tune

    from trainables.config import RunContext, load_experiment
    from trainables.grid import GridPlan

    base = load_experiment(ROOT / "search_spaces" / "01_baseline_kobart_rtx3090.yaml")
    experiments = [base.model_copy(update={"name": n}) for n in names]
    run = RunContext(mode="smoke", data_dir=str(ROOT / "data"), models={})
    plan = GridPlan(experiments=experiments, run=run, storage_path=storage_path, name=name,
                    **{"use_gpu": False, "max_concurrent": None, "metric": "score", "max_failures": 0, **plan_fields})
    space = {"experiment": tune.grid_search([e.model_dump() for e in experiments]),
             "run": {**run.model_dump(), **(run_extra or {})}}
    return plan, space


def trained_like(model, seed: int = 0) -> None:
    """Stands in for training: every trainable weight moves a little (LoRA's B matrices start at zero, so an
    untrained adapter would be a no-op and hide a wrong merge or a lost row)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def save_trial_checkpoint(model, tokenizer, folder, exp, model_path: str, settings) -> dict:
    """A checkpoint folder as a trial leaves one (model or adapter, tokenizer, trial_meta.json); returns the meta as
    predict.read_meta would give it."""
    import json

    from trainables.layout import TRIAL_META

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    meta = {"experiment": exp, "model_path": model_path, "settings": settings.as_metrics()}
    (folder / TRIAL_META).write_text(json.dumps({**meta, "experiment": exp.model_dump()}))
    return meta
