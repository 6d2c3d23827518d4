"""The one base class of every error the user must fix (a bad config, flag, data file, missing model).

`tune_main7.main` is the only place that catches it: it prints `error: <message>` (one line) and exits 2.
Each module keeps its own subclass (ConfigError, DataError, ...) so a message says where it comes from;
a subclass may also derive from a builtin (ValueError) where callers or pydantic validators expect one.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user must fix; str(err) is one line naming the file/flag and the fix."""

    def one_line(self) -> str:
        """The message on one line (several problems are joined by "; ")."""
        lines = [" ".join(line.split()) for line in str(self).splitlines()]
        return "; ".join(line for line in lines if line) or type(self).__name__
