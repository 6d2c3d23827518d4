"""Ray's WandbLoggerCallback without its secret leak.

Ray's callback copies WANDB_API_KEY into its logging actor's `runtime_env`, and Ray's runtime_env agent writes
that in plain text into `<ray temp>/session_*/logs/runtime_env_agent.log`. Here the actor gets no secret in its
runtime_env: it takes the key from its own environment (a local Ray inherits the driver's) or, on a cluster whose
processes were started by `ray start`, from a private 0600 file that the driver writes on its own node (Ray pins
the logging actors to the driver's node) and removes when the experiment ends. Only the file's path travels.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

from ray.air.integrations.wandb import WandbLoggerCallback

from trainables import compat, process

KEY = "WANDB_API_KEY"


def write_key_file() -> str | None:
    """The driver's W&B key in a fresh 0600 file (None without a key); removed at exit."""
    key = os.environ.get(KEY)
    if not key:
        return None
    folder = tempfile.mkdtemp(prefix="tune_main7-wandb-")  # 0700
    path = Path(folder) / "key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    atexit.register(remove_key_file, str(path))
    return str(path)


def remove_key_file(path: str | None) -> None:
    if not path:
        return
    for p in (Path(path), Path(path).parent):
        try:
            p.unlink() if p.is_file() else p.rmdir()
        except OSError:
            pass


def key_from_file(key_file: str | None) -> str | None:
    """The key the driver left in `key_file`, or None (no file, unreadable: W&B then says it has no key)."""
    if not key_file:
        return None
    try:
        return Path(key_file).read_text().strip() or None
    except OSError:
        return None


class KeyFileLoggingActor(compat.wandb_logging_actor_base()):
    """The logging actor: its own environment's key (wandb reads it), else the driver's key file's, handed to
    wandb.init as a value (settings.api_key, which logs in without writing ~/.netrc)."""

    def __init__(self, *args, key_file: str | None = None, **kwargs):
        key = None if os.environ.get(KEY) else key_from_file(key_file)
        if key:
            import wandb

            settings = kwargs.get("settings") or wandb.Settings()
            kwargs["settings"] = settings.model_copy(update={"api_key": key})
        super().__init__(*args, **kwargs)


def _key_file_kwargs(callback) -> dict:
    return {"key_file": getattr(callback, "_key_file", None)}


# Ray reads the key from os.environ when it first defines the actor class (into the runtime_env it logs): hidden
# for that moment.
@compat.wandb_logging_actors(KeyFileLoggingActor, _key_file_kwargs, while_starting=lambda: process.hidden_variable(KEY))
class SafeWandbLoggerCallback(WandbLoggerCallback):
    def setup(self, *args, **kwargs):
        super().setup(*args, **kwargs)
        self._key_file = write_key_file()

    def on_experiment_end(self, trials, **info):
        # A stopped run (Ctrl-C, SIGTERM) ends no trial, so Ray never tells their logging actors to finish and
        # waits its whole upload timeout (30 min) for them: tell them now.
        compat.stop_wandb_logging_actors(self)
        super().on_experiment_end(trials, **info)
        remove_key_file(getattr(self, "_key_file", None))

    def __getstate__(self):  # pickled into tuner.pkl: never the key file's path of a past run
        state = self.__dict__.copy()
        state.pop("_key_file", None)
        return state
