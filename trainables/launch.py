"""What the command line does: check everything, then start (or resume) the grid on Ray.

All checks run before Ray starts or anything is written, so bad input costs a second and touches
no results: configs, data files, GPUs, models.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
from pathlib import Path
from typing import Any

from trainables.config import (
    SMOKE_LIMITS, ConfigError, ExperimentConfig, ModelLocation, Overlay, Placement, RunContext, apply_overlays, load_search_space,
    mode_overlays, static_problems,
)
from trainables.data import check_data_dir, training_texts
from trainables.errors import UserError
from trainables.grid import GridPlan, experiment_name
from trainables.layout import MARKER, is_uri, read_marker, storage_location
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
    changed. `prepared`: (validated configs, warnings, keys to keep) from a search (trainables.search),
    instead of the grid's YAML folder; the kept keys are the searched ones, used as sampled."""
    data = check_data_dir(Path(args.data_dir))  # train and dev; test.csv too when it is there (read once)
    if prepared is None:
        configs = load_search_space(Path(args.search_space), args.only)
        errors, warnings = [], []
        for cfg in configs:
            e, w = static_problems(cfg)
            errors += e
            warnings += w
        if errors:
            raise ConfigError("; ".join(errors))
        keep, train_rows = frozenset(), len(data["train"].frame)  # smoke scales eval_steps to the training rows
    else:
        configs, warnings, keep = prepared
        train_rows = None  # a search keeps the config's evaluation interval
    overlays = [*mode_overlays(args.mode, train_rows), *flag_overlays(args)]
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
        from trainables.models import checkpoint_problem, folder_architecture_problem

        problems = [f"{e.name}: {p}" for e in experiments
                    if (p := checkpoint_problem(e.model.checkpoint)
                        or folder_architecture_problem(e.model.checkpoint, e.model.architecture))]
        if problems:
            raise ConfigError("; ".join(problems))
    return experiments, warnings, mode_changes


def prepare_models(experiments: list[ExperimentConfig], mode: str, data_dir: Path, cache_dir: Path
                   ) -> dict[str, ModelLocation]:
    """Per checkpoint: the folder or hub id the trials load, and where it came from."""
    from trainables.models import build_standin, check_real_model

    models: dict[str, ModelLocation] = {}
    if mode == "smoke":  # no "Writing model shards" bars: HF_HUB_DISABLE_PROGRESS_BARS (process.configure_cli)
        texts = training_texts(data_dir)
        for exp in experiments:
            arch, checkpoint = exp.model.architecture, exp.model.checkpoint
            if checkpoint not in models:
                path = build_standin(arch, texts, cache_dir)
                models[checkpoint] = ModelLocation(model_path=str(path), model_source=f"standin:{arch}-tiny (for {checkpoint})")
        return models
    for exp in experiments:
        checkpoint = exp.model.checkpoint
        if checkpoint not in models:
            where = check_real_model(checkpoint)  # raises ModelUnavailable with the fix
            models[checkpoint] = ModelLocation(model_path=where, model_source=f"checkpoint:{checkpoint}")
    return models


def plan_run(args, prepared=None) -> GridPlan:
    """Everything decided before Ray starts; `prepared` as in check_inputs (a search's sampled config)."""
    from trainables.models import default_cache_dir

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
    from trainables import plan

    card_key, memory = plan.local_card() if gpus else (None, None)
    card, calib, scaled = plan.resolve_card(card_key, memory if card_key is None and memory else None)
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
    from trainables.models import default_cache_dir

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
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled

        token_auth = is_token_auth_enabled()
    except Exception:
        token_auth = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    if token_auth:
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
    from trainables.grid import build_tuner, experiment_location, write_marker

    plan = plan or plan_run(args)
    experiment_dir = experiment_location(plan)
    created = claim_experiment(experiment_dir)  # two runs can't share a folder, even started in the same second
    try:
        write_marker(experiment_dir, plan)
        gpus = start_ray(args, plan.run.mode, plan.use_gpu)
    except BaseException:
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
    from trainables.summaries import print_results

    received = stop_on_signals()
    try:
        tuner.fit()
    except KeyboardInterrupt:  # a second signal, or one before Tune's loop began: state as of the last save
        received = received or [signal.SIGINT]
    finally:
        restore_default_signals()
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


def stop_on_signals() -> list[int]:
    """Route SIGINT, SIGTERM and SIGHUP to Tune's graceful stop (its SIGUSR1 handler, installed while fit() runs);
    a second signal stops at once. Installed after ray.init, whose C-level SIGTERM handler aborts the driver
    without saving anything. Returns the list the received signals are appended to."""
    # process.configure_cli sets TUNE_DISABLE_SIGINT_HANDLER=1: this handler serves Ctrl-C too, so all three act alike
    logging.getLogger("ray.tune.tune").addFilter(_NoRestoreHint())
    received: list[int] = []

    def handler(signum, frame):
        first = not received
        received.append(signum)
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        if first and callable(tune_stop):
            tune_stop(signum, frame)
        else:
            raise KeyboardInterrupt

    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
    return received


def restore_default_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)


class _NoRestoreHint:
    """Drops Tune's "Resume experiment with: Tuner.restore(...)": our --resume line replaces it."""

    def filter(self, record) -> bool:
        return "Tuner.restore(" not in record.getMessage()


def resume_grid(args) -> int:
    from trainables.grid import restore_tuner
    from trainables.report import latest_experiment

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
        problem = writable_problem(Path(target), "results", "--resume")
        if problem:
            raise UsageError(problem)
    print(f"Resuming {target}", flush=True)
    start_ray(args, marker["mode"], marker["use_gpu"])
    return fit_until_done_or_stopped(restore_tuner(target, marker), target, getattr(args, "metric", None))


def not_an_experiment(target: Path | None, asked: object) -> str | None:
    """Why `target` can't be read as one of our experiments, or None when it can."""

    if target is None or not Path(target).is_dir():
        return f"no experiment found at {asked}; run one first, or pass the folder printed when it started"
    if read_marker(target) is None:
        return f"{target} is not an experiment started by tune_main7.py (no {target}/{MARKER})"
    if not any(Path(target).glob("experiment_state*.json")):
        return f"{target} has no Tune state yet (the run stopped before its first trial was scheduled); start a new run"
    return None


def check_only(args) -> int:
    experiments, warnings, mode_changes = check_inputs(args)
    for exp in experiments:
        print(f"ok  {exp.name}: {exp.model.architecture} {exp.model.checkpoint}")
        if mode_changes.get(exp.name):
            print(f"      {args.mode} mode changes: {'; '.join(mode_changes[exp.name])}")
        if args.mode != "smoke" and Path(exp.model.checkpoint).is_dir():
            print(f"      {framing_report(exp)}")
    for w in warnings:
        print(f"warning: {w}")
    return 0


def plan_command(args) -> int:
    """`plan`: the table of predicted memory and time per config, or `plan --calibrate` on a GPU."""
    from trainables import plan

    if getattr(args, "calibrate", False):
        return plan.calibrate(args)
    if args.mode == "smoke":
        args.mode = "full"  # smoke trials are tiny CPU stand-ins: the plan is for the real models
    experiments, warnings, _ = check_inputs(args)
    gpus = getattr(args, "gpus", None)
    card_key, memory = (None, None)
    if not args.card and args.gpu_memory is None:
        card_key, memory = plan.local_card_cheap()
    card, calib, scaled = plan.resolve_card(args.card or card_key,
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

    from trainables.framing import probe_framing
    from trainables.models import ModelUnavailable, check_real_model, load_tokenizer, project_token_ids

    checkpoint = exp.model.checkpoint
    try:
        path = check_real_model(checkpoint)
        tokenizer = load_tokenizer(path, exp.tokenizer.special_tokens)
        config = AutoConfig.from_pretrained(path)
        framing = probe_framing(tokenizer, config)
    except (ModelUnavailable, OSError, ValueError) as err:
        raise UsageError(f"model.checkpoint {checkpoint} (in {exp.name}): {str(err).splitlines()[0]}") from None
    ids = project_token_ids(tokenizer, exp.tokenizer.special_tokens)
    rows = getattr(config, "vocab_size", None) or len(tokenizer)
    where = (f"; {len(ids)} added tokens at ids {ids[0]}-{ids[-1]} of {rows} model rows"
             f"{'' if ids[-1] < rows else ', the vocabulary grows'}, their rows trained") if ids else ""
    notes = "".join(f"; note: {n}" for n in framing.notes)
    return f"framing {framing.describe()}{where}{notes}"

