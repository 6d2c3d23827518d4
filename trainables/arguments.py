"""The parsed command line as the commands see it: read-only, so no command changes what another part reads.

tune_main7.parse_args builds it once, defaults filled in; a command that needs a different value (plan's mode,
search's experiment name, predict's checkpoint named as the target) works on a copy: `replaced(args, name=...)`.
"""

from __future__ import annotations

import argparse
from typing import Any


class Arguments(argparse.Namespace):
    """argparse's namespace, refusing assignment once built."""

    def __init__(self, **values: Any):
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the parsed arguments are read-only (args.{name}): work on a copy, "
                             f"trainables.arguments.replaced(args, {name}=...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"the parsed arguments are read-only (args.{name})")


def replaced(args: argparse.Namespace, **changes: Any) -> argparse.Namespace:
    """A copy of `args` (read-only if it was) with `changes`; `args` itself stays as it was."""
    return type(args)(**{**vars(args), **changes})
