"""Process-wide settings, in one place: each entry point calls exactly one function here first.

- `configure_cli()`: tune_main7.main (the driver): `.env`, logging, warnings, library verbosity, Ray/W&B env.
- `configure_trial_worker()`: the top of each Ray trial (trainables.trial.entry), before anything heavy is imported.
- `configure_benchmark()`: the benchmarks' entry points.

Builders (grid, launch, summaries, predict, models, ...) never set environment variables, warning filters or
library verbosity themselves; they read what these functions set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
NOISY_LIBRARIES = ("transformers", "datasets", "peft", "bitsandbytes")  # their INFO/WARNING notes are not ours to act on

# Trial workers get these through Ray's runtime_env (Ray logs it: never a secret here; secrets reach local workers
# by inheriting the driver's environment). Tune's trial table shows progress: no per-trial bars or advisory notes.
TRIAL_WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "WANDB_SILENT": "true",
    "UNSLOTH_DISABLE_STATISTICS": "1",  # Unsloth's usage statistics call home; trials run offline or on clusters
}
SMOKE_WORKER_ENV = {"HF_HUB_OFFLINE": "1"}  # stand-ins only: never wait on a hub

DRIVER_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # our CLIReporter table; Ray's new output engine ignores custom reporters (=1: Ray's own)
    # Smoke trials checkpoint every few seconds; Ray's "snapshotting may become a bottleneck" advice is noise there.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}


def set_defaults(env: dict[str, str]) -> None:
    """Each variable of `env` into os.environ unless it is set already (what the user exported wins)."""
    for name, value in env.items():
        os.environ.setdefault(name, value)


def worker_env(mode: str) -> dict[str, str]:
    """Ray's runtime_env env_vars for the trials of a run in `mode`."""
    return {**TRIAL_WORKER_ENV, **(SMOKE_WORKER_ENV if mode == "smoke" else {})}


def quiet_libraries(level: int = logging.ERROR) -> None:
    """Library loggers, transformers' own verbosity and progress bars, deprecation notes: the one place."""
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(level)
    from trainables.compat import ray_checkpoint_loggers

    for name in ray_checkpoint_loggers():
        logging.getLogger(name).setLevel(logging.WARNING)  # "Checkpoint successfully created at" per report
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes
    if "transformers" not in sys.modules:  # a trial's top, where Unsloth may still have to come first: its
        return  # TRANSFORMERS_VERBOSITY (TRIAL_WORKER_ENV) is read when transformers is imported
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def default_wandb_mode() -> None:
    """No W&B key: offline (runs land on disk for `wandb sync`). Also needed before a restore, whose unpickled
    WandbLoggerCallback checks for a key in the driver."""
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"


@contextlib.contextmanager
def hidden_variable(name: str) -> Iterator[None]:
    """`name` out of this process's environment for the block, then back as it was (W&B's key while Ray defines
    its logging actor, which would copy it into a runtime_env that Ray logs: trainables/driver/wandb_logging.py)."""
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def load_dotenv_files(paths=None) -> list:
    """The `.env` files' variables into os.environ (never overriding what is set); returns the files read.

    Into os.environ on purpose: a local Ray's trial workers and the W&B logging actors inherit the driver's
    environment, which is how a key reaches them without going through Ray's runtime_env (logged in plain text);
    and secrets.redact/find_secrets look for these values there."""
    from trainables.secrets import dotenv_values_to_set

    values, files = dotenv_values_to_set(paths)
    os.environ.update(values)
    return files


def configure_cli(command: str = "run", mode: str = "smoke") -> None:
    """The driver: `.env` first (WANDB_API_KEY, HF_TOKEN, ...), then logging and the Ray/W&B environment.
    Hub download bars stay on only where a real checkpoint may be downloaded (run/check/search, not smoke).

    `.env` values go into os.environ (never overriding what is set) because local Ray trial workers and W&B's
    logging actors inherit the driver's environment: that is how a secret reaches them without passing through
    Ray's runtime_env, which Ray writes into its logs (trainables/secrets.py, wandb_logging.py)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    load_dotenv_files()
    set_defaults(DRIVER_ENV)
    default_wandb_mode()
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # launch.handled_signals serves Ctrl-C like SIGTERM/SIGHUP
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is imported
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if command in ("predict", "report", "plan") or mode == "smoke":  # no "Writing model shards"/loading bars
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes, not ours to act on
    logging.getLogger("optuna").setLevel(logging.WARNING)  # one line per sampled trial otherwise
    for name in NOISY_LIBRARIES[2:]:  # bitsandbytes' "Failed to load CPU gemm_4bit_forward" on import (predict)
        logging.getLogger(name).setLevel(logging.ERROR)


def configure_trial_worker() -> None:
    """A Ray trial process (also what a local trial inherits through runtime_env, set again for safety), first
    thing: bitsandbytes' "Failed to load CPU gemm_4bit_forward" is logged while the recipe's imports load it."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    set_defaults(TRIAL_WORKER_ENV)
    quiet_libraries()


def configure_benchmark(level: int = logging.WARNING, env: dict[str, str] | None = None) -> None:
    """A benchmark process: warnings and errors only, libraries quiet; `env`'s variables as defaults too."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    set_defaults(env or {})
    set_defaults(TRIAL_WORKER_ENV)
    quiet_libraries()
