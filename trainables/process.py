"""Process-wide settings, in one place: each entry point calls exactly one function here first.

- `configure_cli()`: tune_main7.main (the driver): `.env`, logging, warnings, library verbosity, Ray/W&B env.
- `configure_trial_worker()`: the top of each Ray trial function (seq2seq.train_summarizer).
- `configure_benchmark()`: the benchmarks' entry points.

Builders (grid, launch, summaries, predict, models, ...) never set environment variables, warning filters or
library verbosity themselves; they read what these functions set.
"""

from __future__ import annotations

import logging
import os
import warnings

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
NOISY_LIBRARIES = ("transformers", "datasets", "peft", "bitsandbytes")  # their INFO/WARNING notes are not ours to act on
RAY_STORAGE_LOGGERS = ("ray.train._internal.storage", "ray.train.v2._internal.execution.storage")

# Trial workers get these through Ray's runtime_env (Ray logs it: never a secret here; secrets reach local workers
# by inheriting the driver's environment). Tune's trial table shows progress: no per-trial bars or advisory notes.
TRIAL_WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "WANDB_SILENT": "true",
}
SMOKE_WORKER_ENV = {"HF_HUB_OFFLINE": "1"}  # stand-ins only: never wait on a hub

DRIVER_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # our CLIReporter table; Ray's new output engine ignores custom reporters (=1: Ray's own)
    # Smoke trials checkpoint every few seconds; Ray's "snapshotting may become a bottleneck" advice is noise there.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}


def worker_env(mode: str) -> dict[str, str]:
    """Ray's runtime_env env_vars for the trials of a run in `mode`."""
    return {**TRIAL_WORKER_ENV, **(SMOKE_WORKER_ENV if mode == "smoke" else {})}


def quiet_libraries(level: int = logging.ERROR) -> None:
    """Library loggers, transformers' own verbosity and progress bars, deprecation notes: the one place."""
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(level)
    for name in RAY_STORAGE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)  # "Checkpoint successfully created at" per report
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def default_wandb_mode() -> None:
    """No W&B key: offline (runs land on disk for `wandb sync`). Also needed before a restore, whose unpickled
    WandbLoggerCallback checks for a key in the driver."""
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"


def configure_cli(command: str = "run", mode: str = "smoke") -> None:
    """The driver: `.env` first (WANDB_API_KEY, HF_TOKEN, ...), then logging and the Ray/W&B environment.
    Hub download bars stay on only where a real checkpoint may be downloaded (run/check/search, not smoke).

    `.env` values go into os.environ (never overriding what is set) because local Ray trial workers and W&B's
    logging actors inherit the driver's environment: that is how a secret reaches them without passing through
    Ray's runtime_env, which Ray writes into its logs (trainables/secrets.py, wandb_logging.py)."""
    from trainables.secrets import load_dotenv_files

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    load_dotenv_files()
    for name, value in DRIVER_ENV.items():
        os.environ.setdefault(name, value)
    default_wandb_mode()
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # launch.stop_on_signals serves Ctrl-C like SIGTERM/SIGHUP
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if command in ("predict", "report", "plan") or mode == "smoke":  # no "Writing model shards"/loading bars
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes, not ours to act on
    logging.getLogger("optuna").setLevel(logging.WARNING)  # one line per sampled trial otherwise
    for name in NOISY_LIBRARIES[2:]:  # bitsandbytes' "Failed to load CPU gemm_4bit_forward" on import (predict)
        logging.getLogger(name).setLevel(logging.ERROR)


def configure_trial_worker() -> None:
    """A Ray trial process (also what a local trial inherits through runtime_env, set again for safety)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    for name, value in TRIAL_WORKER_ENV.items():
        os.environ.setdefault(name, value)
    quiet_libraries()


def configure_benchmark(level: int = logging.WARNING) -> None:
    """A benchmark process: warnings and errors only, libraries quiet."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for name, value in TRIAL_WORKER_ENV.items():
        os.environ.setdefault(name, value)
    quiet_libraries()
