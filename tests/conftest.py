"""Shared fixtures: the repo's paths, a stand-in cache, and one smoke-grid run reused by every test that
only reads its results (a grid costs ~2 minutes on 2 cores; each fresh trial process ~8 s of imports)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# One OpenMP thread per test process (set before any test imports torch; subprocesses inherit it). The suite runs
# three xdist workers on two cores beside Ray's trial processes (already one thread each, launch.py's torch_threads):
# torch's default of a thread per core oversubscribes them, and its idle threads spin. Measured on the 2-core
# machine, quick subset: 191.6 core-seconds with the default, 170.1 with one thread. Sizes and code paths are unchanged.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# One Ray authentication mode for every process of the run, fixed before Ray is imported. Left unset, Ray 2.60's
# first local ray.init() in a test process sets RAY_AUTH_MODE=token in that process's environment (and its cached
# config), so Ray processes started before and after it disagree: a Cluster node added after such an init refused
# its head's unauthenticated calls and the trials waited forever (the suite's hang in CI; tests/test_cluster.py).
# test_dashboard checks Ray's default (token) in a process of its own, without this variable.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# No idle Ray workers started ahead of need. Ray prestarts one plain Python worker per CPU when a node starts and
# when its first driver connects; the trials (actors with the run's runtime_env) and the tests' tasks start their
# own, so on this suite's ~25 Ray sessions those sat idle: 57 idle workers, 72 core-seconds of the 1465 of one
# measured run on the 2-core machine. Scheduling and code paths are unchanged; a worker is started when needed.
os.environ.setdefault("RAY_enable_worker_prestart", "0")
os.environ.setdefault("RAY_prestart_worker_first_driver", "0")


# Commands that start no Ray and stop nothing: run_cli calls main(argv) for them in this process (a fresh
# interpreter adds ~5 s of imports and nothing else); runs, searches and resumes get their own process.
IN_PROCESS = {"report", "predict", "export", "check", "plan"}


def run_cli(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python tune_main7.py ARGS` as a user would; returns the finished process (output captured). IN_PROCESS
    commands run through tune_main7.main in this process, with the console captured the same way."""
    if args and args[0] in IN_PROCESS:
        return run_in_process(*args, env=env)
    return subprocess.run(
        [sys.executable, str(ROOT / "tune_main7.py"), *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def run_in_process(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """tune_main7.main(ARGS) from the repo's folder with `env` added: its exit code, stdout, and stderr with the log
    lines (the driver's LOG_FORMAT) as the command line prints them; the environment and logging are put back."""
    import contextlib
    import io
    import logging

    from trainables.process import LOG_FORMAT
    from tune_main7 import main

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root, saved_env, cwd = logging.getLogger(), dict(os.environ), os.getcwd()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # as configure_cli's basicConfig sets it (a no-op under pytest's own handlers)
    os.environ.update(env or {})
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as stop:  # argparse's usage errors and --help
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        os.chdir(cwd)
        root.removeHandler(handler)
        root.setLevel(level)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["tune_main7.py", *args], code, out.getvalue(), err.getvalue())


def run_refused(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A command line that must stop before Ray starts (bad input, a usage error): main(argv) in this process, as
    run_in_process, with Ray's start replaced by a failure, so that a case which wrongly goes on fails at once
    instead of training here."""
    from unittest import mock

    def started(*_args, **_kwargs):
        raise AssertionError(f"tune_main7.py {' '.join(args)}: started Ray instead of refusing")

    with mock.patch("trainables.driver.launch.start_ray", started):
        return run_in_process(*args, env=env)


def kill_between_writes(driver: subprocess.Popen, experiment_dir: Path) -> None:
    """SIGKILL the driver's process group (started with start_new_session) at a moment when Tune's state files in
    `experiment_dir` and every trial's result.json read back whole, and every trial's latest checkpoint in Tune's
    saved state is still there: the group is frozen (SIGSTOP), checked, and let run a little more otherwise. Both
    are Ray Tune's windows, not the resume these callers test: its copies are not atomic (a kill during one is
    tests/test_damaged_state.py's case), and it deletes a checkpoint that fell out of the kept ones before its next
    state save (compat.deleted_latest_checkpoints; the killed-driver test hit it in 2 of 3 fresh-clone runs). --resume
    mends the second, which test_resume_repoints_a_deleted_latest_checkpoint_to_the_newest_one_left tests on its
    own; waiting here keeps the resume these callers check on Tune's plain path, the same in every run."""
    import json
    import signal
    import time

    from trainables import compat

    def parses(line: str) -> bool:
        try:
            json.loads(line)
        except ValueError:
            return False
        return True

    def whole() -> bool:
        for result in experiment_dir.glob("*/result.json"):
            text = result.read_text(encoding="utf-8")
            if text and (not text.endswith("\n") or not parses(text.splitlines()[-1])):
                return False
        return not compat.unreadable_tune_state(experiment_dir) and not compat.deleted_latest_checkpoints(experiment_dir)

    try:
        deadline = time.monotonic() + 60  # Tune saves its state every few seconds
        while time.monotonic() < deadline:
            os.killpg(driver.pid, signal.SIGSTOP)
            if whole():
                break
            os.killpg(driver.pid, signal.SIGCONT)
            time.sleep(0.1)
    except ProcessLookupError:  # the group is gone already: the caller's own check says why
        pass
    finally:
        try:
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        driver.wait(timeout=30)


def write_sample(folder: Path, **rows: int) -> Path:
    """The first `rows[split]` rows of each named split of the shipped sample (data/<split>.csv), written as
    `folder`/<split>.csv: `write_sample(d, train=16, dev=4)`."""
    import pandas as pd

    for split, n in rows.items():
        pd.read_csv(ROOT / "data" / f"{split}.csv", dtype=str).head(n).to_csv(Path(folder) / f"{split}.csv", index=False)
    return Path(folder)


@pytest.fixture(scope="session")
def standin_cache(tmp_path_factory) -> Path:
    """One stand-in cache for the whole test run, shared by the parallel workers (pytest-xdist): a stand-in is
    built once (the builder holds a file lock, families.common.build_once) and rebuilt only when data changes."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # not under xdist
        return tmp_path_factory.mktemp("standins")
    shared = tmp_path_factory.getbasetemp().parent / "standins"  # the run's folder, above each worker's own
    shared.mkdir(exist_ok=True)
    return shared


# Fixtures that run Ray grids or CLI runs (a minute or more each): the tests sharing one run on one xdist worker,
# so that it is made once (`--dist loadgroup`). Cheaper shared fixtures may be made once per worker.
RUN_FIXTURES = {"smoke_grid", "llm_smoke_grid", "two_runs", "interrupted_run", "reference_run", "runs", "default_search",
                "killed_grid", "toy_ray", "one_gpu_ray", "morph"}
# (killed_grid, toy_ray, one_gpu_ray: a Ray session each, made once instead of on every worker that ran one of their
# tests; morph: Kiwi's model, ~4 s to load)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group markers into the node ids
def pytest_collection_modifyitems(config, items):
    """Group each test with every other test that shares one of its RUN_FIXTURES (transitively)."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    shared_by = {}
    for item in items:
        defs = item._fixtureinfo.name2fixturedefs if hasattr(item, "_fixtureinfo") else {}
        keys = [name + (f"@{item.module.__name__}" if defs[name][-1].scope == "module" else "")
                for name in getattr(item, "fixturenames", ()) if name in RUN_FIXTURES and defs.get(name)]
        for key in keys[1:]:
            parent[root(key)] = root(keys[0])
        shared_by[item] = keys
    for item, keys in shared_by.items():
        if keys:
            item.add_marker(pytest.mark.xdist_group(root(keys[0])))
    # The longest work first (workers take groups in this order): the group of the seven-config grid, the other
    # groups, then the other slow tests; the quick ones fill the workers' gaps at the end.
    def order(item) -> int:
        keys = shared_by[item]
        if keys:
            return 0 if root(keys[0]) == root("smoke_grid") else 1
        return 2 if item.get_closest_marker("slow") else 3

    items.sort(key=order)


# The rows of the shipped sample (data/: 300 train, 50 dev, 50 test) that the suite's smoke runs train and
# evaluate on, through --data-dir as a user passes it: the same code paths at a third of the training and a quarter
# of the evaluation (a smoke trial trained 300 rows three times and generated for 50 dev rows at each of its ~9
# evaluations). Every run shares these texts, so each warm stand-in is built once per test run.
SUITE_ROWS = {"train": 100, "dev": 12, "test": 8}


@pytest.fixture(scope="session")
def suite_data(tmp_path_factory) -> Path:
    """The SUITE_ROWS sample as a data folder (each xdist worker writes the same bytes: one stand-in hash)."""
    return write_sample(tmp_path_factory.mktemp("suite-data"), **SUITE_ROWS)


@pytest.fixture(scope="session")
def smoke_grid(tmp_path_factory, standin_cache, suite_data) -> tuple[Path, subprocess.CompletedProcess]:
    """The seven-trial smoke grid on the suite's sample (suite_data), run once through the real command line."""
    storage = tmp_path_factory.mktemp("ray_results")
    proc = run_cli("--mode", "smoke", "--storage-path", str(storage), "--name", "smoke-grid",
                   "--data-dir", str(suite_data), "--cache-dir", str(standin_cache))
    return storage / "smoke-grid", proc


# The decoder-only grid's trial that the shared LLM grid kills once mid-run (Tune retries it from its checkpoint).
LLM_KILLED_TRIAL = "03_solar_10.7b_instruct_qlora_winner"  # no early stop in smoke: all 3 epochs


@pytest.fixture(scope="session")
def llm_smoke_grid(tmp_path_factory, standin_cache, suite_data) -> tuple[Path, subprocess.CompletedProcess, Path]:
    """The decoder-only grid (search_spaces/llm) in smoke mode on the suite's sample, run once through the real
    command line, with one
    trial (LLM_KILLED_TRIAL) SIGKILLed once after its first epoch (tests/fault_injection.py): (experiment folder,
    the finished process, the kill's marker file)."""
    import json

    work = tmp_path_factory.mktemp("llm_grid")
    marker = work / "killed.txt"
    fault = json.dumps({"kill_after_epoch": 1, "marker": str(marker), "only": LLM_KILLED_TRIAL})
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fault_cli.py"), fault, "--mode", "smoke", "--search-space",
         str(ROOT / "search_spaces" / "llm"), "--storage-path", str(work / "results"), "--name", "llm-grid",
         "--data-dir", str(suite_data), "--cache-dir", str(standin_cache)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800, env=dict(os.environ))
    return work / "results" / "llm-grid", proc, marker


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
    from trainables.driver.grid import GridPlan

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


def trained_lora_checkpoint(folder: Path, config: str, arch: str, cache: Path):
    """A checkpoint folder as a trial of `config` (a shipped YAML, smoke mode) leaves one, on a cold stand-in of
    `arch` with its trainable weights moved as training would (trained_like). Returns (meta, tokenizer, settings)."""
    import torch

    from trainables.config import apply_mode, load_experiment
    from trainables.data import training_texts
    from trainables.trial.families.common import load_tokenizer
    from trainables.trial.families.seq2seq.model import load_model
    from trainables.trial.families.seq2seq.standin import build_standin
    from trainables.trial.models import Environment, decide_settings

    base = str(build_standin(arch, training_texts(ROOT / "data"), cache, warm_start=False))
    exp, _ = apply_mode(load_experiment(ROOT / "search_spaces" / f"{config}.yaml"), "smoke")
    settings = decide_settings(exp, Environment.probe(), "standin")
    tokenizer = load_tokenizer(base, exp.tokenizer.special_tokens)
    torch.manual_seed(0)
    model, _ = load_model(exp, base, tokenizer, settings)
    trained_like(model)
    Path(folder).mkdir(parents=True, exist_ok=True)
    return save_trial_checkpoint(model, tokenizer, Path(folder), exp, base, settings), tokenizer, settings
