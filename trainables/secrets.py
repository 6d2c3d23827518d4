"""Secrets (WANDB_API_KEY, HF_TOKEN, ...): read from the environment or a `.env` file, never written anywhere.

The driver calls `load_dotenv_files()` before Ray starts. Values land in the driver's environment only; the
local Ray cluster it starts, and so every trial process, inherits that environment. Secret values are never
put into the trial config (`run` section -> params.json, result.json, Tune's console table) nor into Ray's
`runtime_env` env_vars (which Ray logs): `check_no_secrets` guards both.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

from trainables.errors import UserError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
# Names we know carry credentials; any name matching SECRET_NAME also counts.
KNOWN_SECRETS = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN")
SECRET_NAME = re.compile(r"(?i)(api[_-]?key|(^|_)token($|_)|secret|password)")  # not "tokenizer"
REDACTED = "***"


class SecretLeak(UserError, ValueError):
    """A secret would be written into params, results or logs."""


def is_secret_name(name: str) -> bool:
    return name in KNOWN_SECRETS or bool(SECRET_NAME.search(name))


def dotenv_candidates(cwd: Path | None = None) -> list[Path]:
    """`.env` in the current folder first, then the repo root (the first one to set a name wins)."""
    seen, out = set(), []
    for folder in (Path(cwd or Path.cwd()), ROOT):
        path = (folder / ".env").resolve()
        if path not in seen:
            seen.add(path)
            out.append(path)
    return out


def load_dotenv_files(paths: Iterable[Path] | None = None) -> list[Path]:
    """Load `.env` files into os.environ without overriding what is already set; return the files read.

    Into os.environ on purpose (called once, by process.configure_cli): a local Ray's trial workers and the W&B
    logging actors inherit the driver's environment, which is how a key reaches them without going through Ray's
    runtime_env (logged in plain text); and `redact`/`find_secrets` look for these values there.

    Logs only the file names and the variable names, never a value."""
    try:
        from dotenv import dotenv_values
    except ImportError:  # python-dotenv missing: the environment alone counts
        return []
    loaded = []
    for path in paths if paths is not None else dotenv_candidates():
        path = Path(path)
        if not path.is_file():
            continue
        try:
            values = dotenv_values(path, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            log.warning("%s: not read (%s); set the variables in the environment instead", path, type(err).__name__)
            continue
        names = [k for k, v in values.items() if v is not None and k not in os.environ]
        for name in names:
            os.environ[name] = values[name]
        loaded.append(path)
        if names:
            log.info("%s: set %s from the file", path, ", ".join(sorted(names)))
    return loaded


def secret_values(environ: dict[str, str] | None = None) -> set[str]:
    """The values of the secret-named variables in the environment (long enough to be worth looking for)."""
    env = os.environ if environ is None else environ
    return {v for k, v in env.items() if is_secret_name(k) and v and len(v) >= 6}


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    for value in sorted(secret_values(environ), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def find_secrets(obj: Any, where: str = "", environ: dict[str, str] | None = None) -> list[str]:
    """Paths inside a nested dict/list whose key is secret-named or whose value is a secret's value."""
    values = secret_values(environ)
    found: list[str] = []

    def walk(o: Any, path: str) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                p = f"{path}.{k}" if path else str(k)
                if is_secret_name(str(k)) and v not in (None, "", False):
                    found.append(p)
                else:
                    walk(v, p)
        elif isinstance(o, (list, tuple)):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")
        elif isinstance(o, str) and any(s in o for s in values):
            found.append(path)

    walk(obj, where)
    return found


def check_no_secrets(obj: Any, what: str) -> None:
    """Raise if `obj` (trial config, runtime_env env_vars) would carry a secret into files or logs."""
    found = find_secrets(obj)
    if found:
        raise SecretLeak(f"{what} would carry secret value(s) at {', '.join(found)}: secrets are read from the "
                         "environment or .env by each process, never passed in configs")
