"""The project's error types: what the CLI reports to a user as one line.

Every error caused by the user's input (a netlist, a WAV file, an option value, a name that
does not exist, a Newton solve that fails on the given circuit) is a :class:`CircuitsimError`.
The CLI prints those as ``circuitsim: error: <message>``; anything else is an internal error
and is shown with its traceback and a request to report it (docs/architecture.md, "Errors").
"""

from __future__ import annotations


class CircuitsimError(Exception):
    """Base of every error that names a problem with the user's input (one-line ``str()``)."""


class UsageError(CircuitsimError, ValueError):
    """A bad argument or option value (also a ``ValueError``, so API callers may catch either)."""


class UnknownNameError(CircuitsimError, KeyError):
    """A value, node, element or source name that the circuit does not have (also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0]) if self.args else ""


__all__ = ["CircuitsimError", "UnknownNameError", "UsageError"]
