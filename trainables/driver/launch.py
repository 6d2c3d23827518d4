"""What the command line does: check everything, then start (or resume) the grid on Ray.

All checks run before Ray starts or anything is written, so bad input costs a second and touches
no results: configs, data files, GPUs, models.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
from pathlib import Path
from typing import Any, Iterator

from trainables.config import (
    SMOKE_LIMITS, ConfigError, ExperimentConfig, ModelLocation, Overlay, Placement, RunContext, apply_overlays, load_search_space,
    mode_overlays, static_problems,
)
from trainables.data import check_data_dir, training_texts
from trainables.errors import UserError
from trainables.driver.grid import GridPlan, experiment_name
from trainables.layout import DRIVER_RECORD, MARKER, is_uri, read_marker, storage_location
from trainables.results.status import describe_driver, remove_driver_record, running_driver, write_driver_record
from trainables.secrets import check_no_secrets

log = logging.getLogger("tune_main7")


class UsageError(UserError):
    """Anything the user must fix before a run can start."""


def count_local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def flag_overlays(args) -> list[Overlay]:
    """What the command line changes in every config, as overlays (recorded with each trial's eff_mode_changes)."""
    out = []
    if getattr(args, "tokenization", None):
        out.append(Overlay("metric.tokenization", args.tokenization, "--tokenization"))
    if getattr(args, "metric", None):
        out.append(Overlay("metric.best_metric", args.metric, "--metric"))
    return out


def run_metric(experiments: list[ExperimentConfig], files: str) -> str:
    """The one metric of a run: each config's metric.best_metric decides its early stopping, and Tune keeps
    checkpoints and ranks trials by one metric for all of them, so they must agree."""
    chosen = {e.metric.best_metric for e in experiments}
    if len(chosen) > 1:
        raise ConfigError(
            f"{files}: the configs disagree on metric.best_metric ("
            + ", ".join(f"{e.name}: {e.metric.best_metric}" for e in experiments)
            + "); a run ranks every trial by one metric: set the same value in each YAML, or pass --metric for all")
    return chosen.pop()


def check_inputs(args, prepared=None) -> tuple[list[ExperimentConfig], list[str], dict[str, list[str]]]:
    """Validate configs and data for a mode; return the experiments as they will run (the mode's and the
    command line's overlays applied: the one place a run changes a YAML), warnings, and per experiment what
    changed. `prepared`: (validated configs, warnings, keys to keep, overlays after the mode's) from a search
    (trainables.driver.search), instead of the grid's YAML folder; the kept keys are the searched ones, used as
    sampled, and the search's overlays set what its sampled values decide (the evaluation interval)."""
    data = check_data_dir(Path(args.data_dir))  # train and dev; test.csv too when it is there (read once)
    train_rows, extra = len(data["train"].frame), []  # smoke scales eval_steps to the training rows
    if prepared is None:
        configs = load_search_space(Path(args.search_space), args.only)
        errors, warnings = [], []
        for cfg in configs:
            e, w = static_problems(cfg)
            errors += e
            warnings += w
        if errors:
            raise ConfigError("; ".join(errors))
        keep = frozenset()
    else:
        configs, warnings, keep, extra = prepared
    overlays = [*mode_overlays(args.mode, train_rows), *extra, *flag_overlays(args)]
    experiments, mode_changes = [], {}
    for cfg in configs:
        exp, mode_changes[cfg.name] = apply_overlays(cfg, overlays, keep)  # each trial reports them
        experiments.append(exp)
    morpheme = [e.name for e in experiments if e.metric.tokenization == "morpheme"]
    if morpheme and importlib.util.find_spec("kiwipiepy") is None:
        raise ConfigError(
            f"metric.tokenization: morpheme (in {', '.join(morpheme)}) needs the Korean analyzer kiwipiepy, which is not "
            "installed; pip install -e '.[morpheme]', or use --tokenization whitespace"
        )
    if args.mode == "smoke":
        log.info("smoke mode: stand-in models, lengths <= %d/%d tokens, <= %d epochs, <= %d beams, LoRA rank <= %d, "
                 "lr >= %g; each trial reports what it changed (eff_mode_changes)", SMOKE_LIMITS["encoder_max_len"],
                 SMOKE_LIMITS["decoder_max_len"], SMOKE_LIMITS["num_train_epochs"], SMOKE_LIMITS["num_beams"],
                 SMOKE_LIMITS["lora_rank"], SMOKE_LIMITS["min_learning_rate"])
    if not (Path(args.data_dir) / "test.csv").exists():
        warnings.append(f"{Path(args.data_dir) / 'test.csv'} not found: training runs, `predict` will need it")
    if args.mode != "smoke":  # stand-ins replace the checkpoints in smoke mode
        from trainables.trial.models import checkpoint_problem, folder_architecture_problem

        problems = [f"{e.name}: {p}" for e in experiments
                    if (p := checkpoint_problem(e.model.checkpoint)
                        or folder_architecture_problem(e.model.checkpoint, e.model.architecture))]
        if problems:
            raise ConfigError("; ".join(problems))
    return experiments, warnings, mode_changes


def prepare_models(experiments: list[ExperimentConfig], mode: str, data_dir: Path, cache_dir: Path
                   ) -> dict[str, ModelLocation]:
    """Per checkpoint: the folder or hub id the trials load, and where it came from."""
    from trainables.trial.models import check_real_model

    models: dict[str, ModelLocation] = {}
    if mode == "smoke":  # no "Writing model shards" bars: HF_HUB_DISABLE_PROGRESS_BARS (process.configure_cli)
        texts = training_texts(data_dir)
        for exp in experiments:
            arch, checkpoint = exp.model.architecture, exp.model.checkpoint
            if checkpoint not in models:
                path = standin_with_progress(arch, checkpoint, texts, cache_dir)
                models[checkpoint] = ModelLocation(model_path=str(path), model_source=f"standin:{arch}-tiny (for {checkpoint})")
        return models
    for exp in experiments:
        checkpoint = exp.model.checkpoint
        if checkpoint not in models:
            where = check_real_model(checkpoint)  # raises ModelUnavailable with the fix
            models[checkpoint] = ModelLocation(model_path=where, model_source=f"checkpoint:{checkpoint}")
    return models


def standin_with_progress(arch: str, checkpoint: str, texts: list[str], cache_dir: Path) -> Path:
    """The stand-in's folder (the model family builds it once per data set), with a line before and one after:
    the first smoke run builds one per family, tens of seconds each on a small machine, and was silent for minutes."""
    import time

    from trainables.trial.families import family_of

    print(f"Stand-in for {checkpoint}: a tiny {arch}, tokenizer trained and warm-started on train.csv, kept in "
          f"{cache_dir}; built once per data set (tens of seconds), later runs reuse it", flush=True)
    there = {*Path(cache_dir).glob("*"), *Path(cache_dir).glob("*/*")}  # a family keeps its stand-ins one or two deep
    started = time.monotonic()
    path = Path(family_of(arch).build_standin(arch, texts, cache_dir))
    print(f"  {'reused' if path in there else f'built in {time.monotonic() - started:.0f} s'}: {path}", flush=True)
    return path


def plan_run(args, prepared=None) -> GridPlan:
    """Everything decided before Ray starts; `prepared` as in check_inputs (a search's sampled config)."""
    from trainables.trial.models import default_cache_dir

    experiments, warnings, mode_changes = check_inputs(args, prepared)
    for w in warnings:
        log.warning(w)
    use_gpu = (args.mode != "smoke" or getattr(args, "gpu", False)) and not args.allow_cpu
    gpus = 0
    if not use_gpu:  # smoke: one tiny trial per core; real models on the CPU (--allow-cpu): one at a time
        max_concurrent = args.max_concurrent or ((os.cpu_count() or 1) if args.mode == "smoke" else 1)
    elif args.address or os.environ.get("RAY_ADDRESS"):
        max_concurrent = args.max_concurrent  # None: run_grid sets the cluster's GPU count once connected
    else:
        gpus = count_local_gpus()
        if gpus == 0:
            raise UsageError(
                f"--mode {args.mode}{' --gpu' if args.mode == 'smoke' else ''} needs a CUDA GPU, and this machine has none.\n"
                "  Run `python tune_main7.py --mode smoke` for the offline run on stand-in models, or add --allow-cpu "
                "to run the real models on the CPU (very slow)."
            )
        max_concurrent = args.max_concurrent or gpus
    name = args.name or experiment_name(args.mode)
    check_outputs(args, name)  # before any stand-in is built or Ray starts
    data_dir = Path(args.data_dir).resolve()
    run = RunContext(
        mode=args.mode,
        data_dir=str(data_dir),
        models=prepare_models(experiments, args.mode, data_dir, Path(args.cache_dir or default_cache_dir())),
        mode_changes=mode_changes,
        torch_threads=1 if not use_gpu else None,
        wandb=bool(args.wandb),
        wandb_project=getattr(args, "wandb_project", None),
        callbacks=getattr(args, "trial_callbacks", None) or [],  # tests' and benchmarks' extension point
    )
    if args.mode != "smoke":
        experiments, max_concurrent = preflight(args, experiments, run, use_gpu, gpus, max_concurrent)
    check_no_secrets(run.model_dump(), "the trials' `run` config")
    return GridPlan(
        experiments=experiments, run=run, storage_path=storage_location(args.storage_path),
        name=name, use_gpu=use_gpu, max_concurrent=max_concurrent,
        metric=run_metric(experiments, args.search_space if prepared is None else str(args.target)),
        max_failures=args.max_failures, keep_checkpoints=getattr(args, "keep_checkpoints", None) or 1,
    )


def preflight(args, experiments: list[ExperimentConfig], run: RunContext, use_gpu: bool, gpus: int,
              max_concurrent: int | None) -> tuple[list[ExperimentConfig], int | None]:
    """quick/full: print the plan's summary line; on local GPUs, longest trials first, and packed where several
    fit one card (run.placement gives each trial its GPU fraction and memory cap; --no-pack turns it off)."""
    from trainables.driver import plan
    from trainables.driver.calibration import local_card, resolve_card

    card_key, memory = local_card() if gpus else (None, None)
    card, calib, scaled = resolve_card(card_key, memory if card_key is None and memory else None)
    fc = plan.forecast(experiments, Path(run.data_dir), card, calib, scaled, gpus=max(gpus, 1),
                       pack_trials=bool(gpus) and not getattr(args, "no_pack", False),
                       model_paths={k: v.model_path for k, v in run.models.items()})
    line = plan.summary_line(fc)
    if not gpus:  # a cluster's or no GPU: the plan assumed a card
        line += f" [no local GPU: planned for an {card.name}; `plan --card` for another]"
    print(line, flush=True)
    if not use_gpu or not gpus:
        return experiments, max_concurrent  # a cluster (--address) or the CPU: one GPU per trial, as configured
    order = [t.name for t in fc.trials]  # longest first: the grid's makespan is shortest
    experiments = sorted(experiments, key=lambda e: order.index(e.name))
    run.placement = {name: Placement(**p) for name, p in plan.placements(fc, fc.packed).items()}
    if fc.packed and not args.max_concurrent:
        max_concurrent = len(experiments)  # Ray's GPU fractions decide how many run at once
    return experiments, max_concurrent


def writable_problem(path: Path, what: str, flag: str) -> str | None:
    """Why files can't be written under `path` (a folder, created if missing), or None. Probes with a real
    temporary file in the nearest existing folder, so /proc, read-only mounts and a file in the way all count;
    leaves nothing behind."""
    import tempfile

    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{flag} {path}: {existing} is a file, not a folder, so the {what} can't go there; pick another {flag}"
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".tune_main7-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return (f"{flag} {path}: can't write the {what} there ({err.strerror or type(err).__name__} in {existing}); "
                f"pick a writable {flag}")
    return None


def check_outputs(args, name: str) -> None:
    """Every place a run writes, checked before anything is built or Ray starts; an existing experiment is never
    written into (its trials would vanish from report, predict and --resume)."""
    from trainables.trial.models import default_cache_dir

    problems = []
    if not is_uri(args.storage_path):
        problems.append(writable_problem(Path(args.storage_path), "results", "--storage-path"))
    if args.mode == "smoke":
        problems.append(writable_problem(Path(args.cache_dir or default_cache_dir()), "stand-in models", "--cache-dir"))
    problems = [p for p in problems if p]
    if problems:
        raise UsageError("\n".join(problems))
    location = storage_location(args.storage_path).rstrip("/") + "/" + name
    ours = read_marker(location) is not None if is_uri(location) or Path(location).is_dir() else False
    if ours:
        raise UsageError(f"--name {name}: the experiment {location} already exists; continue it with "
                         f"`python tune_main7.py --resume {location}`, or pick another --name")
    if not is_uri(location) and Path(location).exists():
        raise UsageError(f"--name {name}: {location} already exists and is not an experiment of ours; "
                         "pick another --name (or --storage-path)")


def claim_experiment(location: str) -> bool:
    """Create the experiment folder, failing if another run made it first (atomic on a local path); return
    whether it is ours to remove should the run stop before Tune writes anything."""
    if is_uri(location):
        return False
    try:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).mkdir()
    except FileExistsError:
        raise UsageError(f"{location} was just created by another run; continue it with "
                         f"`python tune_main7.py --resume {location}`, or pick another --name") from None
    except OSError as err:
        raise UsageError(f"--storage-path: can't create {location} ({err.strerror}); pick a writable --storage-path") from None
    return True


def worker_env(mode: str) -> dict[str, str]:
    from trainables import process

    env = process.worker_env(mode)
    # Ray logs runtime_env: secrets reach the trials by inheritance from the driver's environment instead.
    check_no_secrets(env, "Ray's runtime_env env_vars")
    return env


def dashboard_message(context) -> str:
    """Where the dashboard is and how to get in: local Ray 2.60 turns token authentication on by default."""
    url = getattr(context, "dashboard_url", None)
    if not url:
        return "Ray dashboard: not running (pip install 'ray[default]' for it)"
    url = url if "://" in url else f"http://{url}"
    lines = [f"Ray dashboard: {url}  (bound to 127.0.0.1: from another machine, `ssh -L 8265:127.0.0.1:8265 HOST`)"]
    from trainables import compat

    if compat.ray_token_auth_enabled(os.environ):
        lines.append("  It asks for a token: paste the output of `ray get-auth-token` (the file ~/.ray/auth_token); "
                     "for the HTTP API send `Authorization: Bearer <token>`")
    return "\n".join(lines)


def start_ray(args, mode: str, use_gpu: bool) -> int:
    """Start a local Ray, or connect to the cluster at --address / RAY_ADDRESS; return the cluster's GPU count."""
    import ray

    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": worker_env(mode)},
        "include_dashboard": bool(args.dashboard),
        "log_to_driver": True,
        "configure_logging": True,
        "logging_level": logging.WARNING,
    }
    if args.dashboard:
        kwargs["dashboard_host"] = "127.0.0.1"
    if args.address:
        kwargs["address"] = args.address
    elif not os.environ.get("RAY_ADDRESS"):
        # a new local Ray: ray.init() alone joins whatever cluster `ray start` last started on this machine
        # (its ray_current_cluster file), another user's or a test's; that one is `--address auto`
        kwargs["address"] = "local"
    context = ray.init(**kwargs)
    if args.dashboard:
        print(dashboard_message(context), flush=True)
    if use_gpu:
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus < 1:
            ray.shutdown()
            raise UsageError(
                f"the Ray cluster at {args.address or 'local'} has no GPU, so {{'gpu': 1}} trials would wait forever; "
                "use --mode smoke, or --allow-cpu"
            )
    return int(ray.cluster_resources().get("GPU", 0))


def run_grid(args, plan: GridPlan | None = None, make_tuner=None) -> int:
    """Plan (unless given), start Ray, write the marker, fit, report. A search passes its plan and a
    `make_tuner(plan)` that builds its Tuner (through grid.build_tuner)."""
    from trainables.driver.grid import build_tuner, experiment_location, write_marker

    plan = plan or plan_run(args)
    experiment_dir = experiment_location(plan)
    created = claim_experiment(experiment_dir)  # two runs can't share a folder, even started in the same second
    try:
        write_driver_record(experiment_dir, "search" if plan.search else "run")  # before the marker: `report` sees a live run
        write_marker(experiment_dir, plan)
        gpus = start_ray(args, plan.run.mode, plan.use_gpu)
    except BaseException:
        remove_driver_record(experiment_dir)
        if created:  # nothing of Tune's there yet: leave no half-made experiment behind
            import shutil

            shutil.rmtree(experiment_dir, ignore_errors=True)
        raise
    if plan.use_gpu and plan.max_concurrent is None:
        plan.max_concurrent = gpus  # --address: as many trials at once as the cluster has GPUs
    what = (f"search around {plan.experiments[0].name}, {plan.search['samples']} samples" if plan.search
            else f"{len(plan.experiments)} trials")
    shares = "GPU shares from the plan" if any(p.gpu < 1 for p in plan.run.placement.values()) else "1 GPU"
    print(f"Experiment {plan.name}: {what}, mode {plan.run.mode}, {shares if plan.use_gpu else '1 CPU'} per trial, "
          f"up to {plan.max_concurrent} at once\n"
          f"Results: {experiment_dir}", flush=True)
    return fit_until_done_or_stopped((make_tuner or build_tuner)(plan), experiment_dir)  # the marker's metric


def fit_until_done_or_stopped(tuner, experiment_dir: Path | str, metric: str | None = None) -> int:
    """Tuner.fit() with Ctrl-C, SIGTERM and SIGHUP all meaning "stop gracefully": Tune stops the trials and saves
    the experiment state, the summary is written, and the console says how to resume. Exit code: 0 when every
    trial finished, 1 when some did not, 128 + the signal's number when stopped (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
    The summary ranks by `metric`, None: the one the experiment ran with (its marker)."""
    from trainables.results.summaries import print_results

    with handled_signals() as received:
        try:
            tuner.fit()
        except KeyboardInterrupt:  # a second signal, or one before Tune's loop began: state as of the last save
            received = received or [signal.SIGINT]
        finally:
            remove_driver_record(experiment_dir)  # the run is over: from here on `report` reads a finished experiment
            import ray

            ray.shutdown()  # the local Ray this run started (or its link to --address); main() may run in-process
    if received:
        print(f"\nStopped by {signal.Signals(received[0]).name}: trials stopped, experiment state saved", flush=True)
    if is_uri(experiment_dir):
        print(f"Results are in {experiment_dir}; `report` and `--resume latest` read a local or mounted path "
              f"(`--resume {experiment_dir}` works from any node)", flush=True)
        code = 0
    elif (problem := not_an_experiment(Path(experiment_dir), experiment_dir)):  # stopped before Tune saved a state
        print(f"(no summary: {problem})", flush=True)
        code = 1
    else:
        code = print_results(Path(experiment_dir), metric)  # a failure here is a bug to see, not a summary to skip
    if received or code:
        print(f"Resume with: python tune_main7.py --resume {experiment_dir}", flush=True)
    return 128 + received[0] if received else code


STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def handled_signals() -> Iterator[list[int]]:
    """For the block: SIGINT, SIGTERM and SIGHUP go to Tune's graceful stop (its SIGUSR1 handler, installed while
    fit() runs); a second signal stops at once. Yields the list the received signals are appended to; on leaving,
    the handlers that were there before are back.

    Entered after ray.init, whose C-level SIGTERM handler aborts the driver without saving anything. A handler set
    outside Python (signal.getsignal says None) can't be put back from Python: the default comes back instead."""
    # process.configure_cli sets TUNE_DISABLE_SIGINT_HANDLER=1: this handler serves Ctrl-C too, so all three act alike
    tune_log, hint = logging.getLogger("ray.tune.tune"), _NoRestoreHint()
    received: list[int] = []

    def handler(signum, frame):
        first = not received
        received.append(signum)
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if first and callable(tune_stop):
            tune_stop(signum, frame)
        else:
            raise KeyboardInterrupt

    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    tune_log.addFilter(hint)
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, handler)
        yield received
    finally:
        for signum, before in previous.items():
            signal.signal(signum, signal.SIG_DFL if before is None else before)
        tune_log.removeFilter(hint)


class _NoRestoreHint:
    """Drops Tune's "Resume experiment with: Tuner.restore(...)": our --resume line replaces it."""

    def filter(self, record) -> bool:
        return "Tuner.restore(" not in record.getMessage()


def resume_grid(args) -> int:
    from trainables.driver.grid import restore_tuner
    from trainables.results.report import latest_experiment

    if args.resume in (None, "latest") and is_uri(args.storage_path):
        raise UsageError(f"--resume latest needs a local or mounted --storage-path; with {args.storage_path} "
                         "pass the experiment: --resume <storage URI>/<experiment name>")
    if is_uri(args.resume):
        target = args.resume.rstrip("/")  # an experiment on shared storage (s3://...): marker and restore via pyarrow.fs
    else:
        target = Path(args.resume) if args.resume not in (None, "latest") else latest_experiment(Path(args.storage_path))
    if target is None:
        raise UsageError(f"nothing to resume: no experiment of ours under {Path(args.storage_path).resolve()}")
    marker = read_marker(target)
    if marker is None:
        raise UsageError(f"{target} is not an experiment started by tune_main7.py (no {target}/{MARKER}); "
                         "pass the folder printed when the run started")
    from ray import tune

    if not tune.Tuner.can_restore(storage_location(target)):
        raise UsageError(f"{target} has no Tune state to resume (the run stopped before its first trial was "
                         "scheduled); start a new run instead")
    if not is_uri(target):
        refuse_a_live_run(Path(target))
        refuse_damaged_state(Path(target))
        done = nothing_left_to_run(Path(target), marker)
        if done:  # exit 0: the experiment is where --resume would bring it; nothing is started or written
            print(done, flush=True)
            return 0
        problem = writable_problem(Path(target), "results", "--resume")
        if problem:
            raise UsageError(problem)
        repoint_deleted_checkpoints(Path(target))
    print(f"Resuming {target}", flush=True)
    write_driver_record(target, "--resume")
    try:
        start_ray(args, marker["mode"], marker["use_gpu"])
        tuner = restore_tuner(target, marker)
    except BaseException:
        remove_driver_record(target)
        raise
    from trainables import compat

    try:
        # Tune's own answer to a state it can't read is to start the experiment over with an empty config
        with compat.restore_or_raise():
            return fit_until_done_or_stopped(tuner, target, getattr(args, "metric", None))
    except compat.TuneRestoreFailed as err:
        raise UsageError(f"--resume {target}: Tune could not read the experiment's saved state ({err}); nothing was "
                         "started and nothing in the folder was changed") from None


def refuse_damaged_state(target: Path) -> None:
    """A resume from a cut state file (the driver was killed while Tune copied it out) fails inside Tune: name the
    file first, and Tune's whole staged copy of it when this machine still has one."""
    from trainables import compat

    damaged = compat.unreadable_tune_state(target)
    if not damaged:
        return
    lines = [f"--resume {target}: Tune's saved state there can't be read back, so the run can't continue (was "
             "its driver killed while Tune was writing it?)"]
    for name, why in damaged:
        staged = compat.staged_tune_state(target.name, name)
        fix = (f"Tune's staged copy is whole: cp {staged[0]} {target / name} and resume again" if staged
               else "no whole copy is left on this machine: start a new run (`report` still reads the finished "
                    "trials)")
        lines.append(f"{target / name} is cut ({why}); {fix}")
    raise UsageError("\n".join(lines))


def repoint_deleted_checkpoints(target: Path) -> None:
    """A trial whose latest checkpoint in Tune's saved state was deleted (the driver was killed after Tune removed
    a checkpoint that fell out of the kept ones and before its next state save) would fail its restore: point it
    at its newest checkpoint still there, and say so (compat.repoint_deleted_latest_checkpoints)."""
    from trainables import compat

    mended, backup = compat.repoint_deleted_latest_checkpoints(target)
    for trial_id, gone, chosen in mended:
        then = (f"it continues from {chosen}, its newest checkpoint left that a result row names" if chosen
                else "no checkpoint of it is left, so it starts over")
        log.warning("--resume: trial %s's latest checkpoint in Tune's saved state (%s) was deleted after that state "
                    "was saved (the driver was killed between a checkpoint clean-up and Tune's next state save); %s. "
                    "The state as it was is kept in %s", trial_id, gone, then, backup)


def refuse_a_live_run(target: Path) -> None:
    """Two drivers on one experiment would each overwrite the other's Tune state: refuse while its run is going."""
    record = running_driver(target)
    if record is None:
        return
    gone = (f"; if that run is gone, remove {target / DRIVER_RECORD} and resume again" if record.get("unchecked")
            else "")
    raise UsageError(f"--resume {target}: it is still being run by {describe_driver(record)}; wait for it to end, "
                     f"or stop it (Ctrl-C) and resume then{gone}")


def nothing_left_to_run(target: Path, marker: dict[str, Any]) -> str | None:
    """The line to print instead of resuming when every trial finished (TERMINATED; a search also has all its
    samples), or None when something is left: a failed, stopped or unstarted trial, or samples still to draw."""
    from trainables.results.report import load_analysis

    trials = load_analysis(target).trials
    samples = int(marker.get("samples") or 0) if marker.get("kind") == "search" else 0
    if not trials or any(t.status != "TERMINATED" for t in trials) or len(trials) < samples:
        return None
    return (f"Nothing left to run: all {len(trials)} trials of {target} finished (TERMINATED); "
            f"`python tune_main7.py report {target}` shows the results, a new run (without --resume) trains again")


def not_an_experiment(target: Path | None, asked: object) -> str | None:
    """Why `target` can't be read as one of our experiments, or None when it can."""

    if target is None or not Path(target).is_dir():
        return f"no experiment found at {asked}; run one first, or pass the folder printed when it started"
    if read_marker(target) is None:
        return f"{target} is not an experiment started by tune_main7.py (no {target}/{MARKER})"
    if not any(Path(target).glob("experiment_state*.json")):
        return still_starting(target) or (f"{target} has no Tune state yet (the run stopped before its first trial "
                                          "was scheduled); start a new run")
    return None


def still_starting(target: Path) -> str | None:
    """A line saying that the run writing `target` is alive but has not scheduled a trial yet (Ray and Tune are
    starting), or None: no Tune state is normal for the first seconds of a run, not a sign that it stopped."""
    record = running_driver(target)
    if record is None or any(Path(target).glob("experiment_state*.json")):
        return None
    return f"{target} is still starting: {describe_driver(record)} has not scheduled its first trial yet; try again in a moment"


def check_only(args) -> int:
    """`check`: every check a run makes before Ray starts (configs, data, local checkpoints, where it would write),
    and only then an `ok` line per config: a config whose checkpoint folder fails is never shown as ok."""
    experiments, warnings, mode_changes = check_inputs(args)
    check_outputs(args, args.name or experiment_name(args.mode))  # takes a run's flags: --storage-path, --name
    framings = {exp.name: framing_report(exp) for exp in experiments
                if args.mode != "smoke" and Path(exp.model.checkpoint).is_dir()}
    for exp in experiments:
        print(f"ok  {exp.name}: {exp.model.architecture} {exp.model.checkpoint}")
        if mode_changes.get(exp.name):
            print(f"      {args.mode} mode changes: {'; '.join(mode_changes[exp.name])}")
        if exp.name in framings:
            print(f"      {framings[exp.name]}")
    for w in warnings:
        print(f"warning: {w}")
    return 0


def plan_command(args) -> int:
    """`plan`: the table of predicted memory and time per config, or `plan --calibrate` on a GPU."""
    from trainables.driver import plan
    from trainables.arguments import replaced
    from trainables.driver.calibration import local_card_cheap, resolve_card

    if getattr(args, "calibrate", False):
        return plan.calibrate(args)
    if args.mode == "smoke":
        args = replaced(args, mode="full")  # smoke trials are tiny CPU stand-ins: the plan is for the real models
    experiments, warnings, _ = check_inputs(args)
    gpus = getattr(args, "gpus", None)
    card_key, memory = (None, None)
    if not args.card and args.gpu_memory is None:
        card_key, memory = local_card_cheap()
    card, calib, scaled = resolve_card(args.card or card_key,
                                       args.gpu_memory if args.gpu_memory is not None else
                                       (memory if card_key is None and memory else None))
    fc = plan.forecast(experiments, Path(args.data_dir), card, calib, scaled, gpus=gpus or 1,
                       pack_trials=not args.no_pack)
    print(f"mode {args.mode}")
    print(plan.format_forecast(fc))
    return 0


def framing_report(exp: ExperimentConfig) -> str:
    """For `check` on a local checkpoint: the BOS/EOS framing its tokenizer gets, and where the added tokens'
    rows are (hub checkpoints are probed when a trial loads them; check stays offline)."""
    from transformers import AutoConfig

    from trainables.trial.families import family_of
    from trainables.trial.families.common import project_token_ids
    from trainables.trial.models import ModelUnavailable, check_real_model

    checkpoint = exp.model.checkpoint
    family = family_of(exp.model.architecture)
    try:
        path = check_real_model(checkpoint)
        tokenizer = family.load_tokenizer(path, exp)
        config = AutoConfig.from_pretrained(path)
        framing = family.framing(tokenizer, config, exp)
    except (ModelUnavailable, OSError, ValueError) as err:
        raise UsageError(f"model.checkpoint {checkpoint} (in {exp.name}): {str(err).splitlines()[0]}") from None
    ids = project_token_ids(tokenizer, exp.tokenizer.special_tokens)
    rows = getattr(config, "vocab_size", None) or len(tokenizer)
    where = (f"; {len(ids)} added tokens at ids {ids[0]}-{ids[-1]} of {rows} model rows"
             f"{'' if ids[-1] < rows else ', the vocabulary grows'}, their rows trained") if ids else ""
    notes = "".join(f"; note: {n}" for n in framing.notes)
    return f"framing {framing.describe()}{where}{notes}"

