"""Secrets (WANDB_API_KEY, HF_TOKEN, ...): read from the environment or a `.env` file, never written anywhere.

`dotenv_values_to_set()` reads the `.env` files; the driver's process.configure_cli puts what they add into its
environment before Ray starts (this module writes nothing). Values land in the driver's environment only; the
local Ray cluster it starts, and so every trial process, inherits that environment. Secret values are never
put into the trial config (`run` section -> params.json, result.json, Tune's console table) nor into Ray's
`runtime_env` env_vars (which Ray logs): `check_no_secrets` guards both.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

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


def dotenv_values_to_set(paths: Iterable[Path] | None = None,
                         environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[Path]]:
    """(the variables the `.env` files set that `environ` (default os.environ) lacks, the files read). The first
    file to set a name wins; nothing already set is overridden. The caller applies them (process.configure_cli).

    Logs only the file names and the variable names, never a value."""
    env = os.environ if environ is None else environ
    try:
        from dotenv import dotenv_values
    except ImportError:  # python-dotenv missing: the environment alone counts
        return {}, []
    to_set: dict[str, str] = {}
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
        names = [k for k, v in values.items() if v is not None and k not in env and k not in to_set]
        to_set.update({name: values[name] for name in names})
        loaded.append(path)
        if names:
            log.info("%s: set %s from the file", path, ", ".join(sorted(names)))
    return to_set, loaded


def secret_variables(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The secret-named variables of the environment whose values are long enough to be worth looking for."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if is_secret_name(k) and v and len(v) >= 6}


def secret_values(environ: dict[str, str] | None = None) -> set[str]:
    return set(secret_variables(environ).values())


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    for value in sorted(secret_values(environ), key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def _values(obj: Any, path: str, descend) -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) of every value inside nested dicts/lists, depth first ("section.key", "key[0]"); a
    dict's value is entered only where `descend(key, value)` says so."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            yield p, str(k), v
            if descend(str(k), v):
                yield from _values(v, p, descend)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield f"{path}[{i}]", "", v
            yield from _values(v, f"{path}[{i}]", descend)


def find_secrets(obj: Any, where: str = "", environ: dict[str, str] | None = None) -> list[str]:
    """Paths inside a nested dict/list whose key is secret-named or whose value is a secret's value."""
    values = secret_values(environ)

    def named(key: str, value: Any) -> bool:
        return is_secret_name(key) and value not in (None, "", False)

    return [p for p, k, v in _values(obj, where, lambda k, v: not named(k, v))
            if named(k, v) or (isinstance(v, str) and any(s in v for s in values))]


# Tokens recognisable by their form alone, for a value that is not (or not yet) in the environment.
TOKEN_FORMS = (
    ("a Hugging Face token (hf_...)", re.compile(r"\bhf_[A-Za-z0-9]{30,}")),
    ("a GitHub token (ghp_..., github_pat_...)", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{30,})")),
    ("an OpenAI-style API key (sk-...)", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}")),
    # not inside a path: a Hugging Face cache snapshot folder (model.checkpoint) is named by its 40-hex commit
    ("a W&B API key (40 hex digits; a commit hash there? shorten it)",
     re.compile(r"(?<![0-9A-Fa-f/\\])[0-9a-f]{40}(?![0-9A-Fa-f/\\])")),
)


def secret_in(text: str, environ: dict[str, str] | None = None) -> str | None:
    """What secret `text` holds, in words that never repeat it (a variable's name, a token's kind), or None."""
    named = sorted(k for k, v in secret_variables(environ).items() if v in text)
    if named:
        return f"the value of ${named[0]}"
    return next((f"what looks like {kind}" for kind, form in TOKEN_FORMS if form.search(text)), None)


def check_config_secrets(raw: Any, path: Path | str) -> None:
    """Refuse a config (a YAML's mapping) with a secret in a value: configs are copied into params.json,
    result.json, trial_meta.json, Tune's state and Ray's files, which redaction of the environment doesn't cover."""
    for where, _, value in _values(raw, "", lambda k, v: True):
        what = secret_in(value) if isinstance(value, str) else None
        if what:
            raise SecretLeak(f"{path}: {where} holds {what}; a config is copied into every results file: remove it "
                             "(secrets belong in the environment or .env, which are never written)")


def check_no_secrets(obj: Any, what: str) -> None:
    """Raise if `obj` (trial config, runtime_env env_vars) would carry a secret into files or logs."""
    found = find_secrets(obj)
    if found:
        raise SecretLeak(f"{what} would carry secret value(s) at {', '.join(found)}: secrets are read from the "
                         "environment or .env by each process, never passed in configs")
