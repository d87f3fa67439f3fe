"""Errors and warnings of the netlist stage.

Every problem with a netlist is reported as a :class:`NetlistError` whose ``str()`` is one
line, ``file:line: message``, so the CLI can print it as is.
"""

from __future__ import annotations

from circuitsim.errors import CircuitsimError
from circuitsim.netlist.ast import Loc


class NetlistError(CircuitsimError):
    """A netlist that cannot be read.  ``str(err)`` is ``"file:line: message"`` on one line."""

    def __init__(self, message: str, loc: Loc | None = None):
        self.message = " ".join(str(message).split())  # one line, whatever the caller passed
        self.loc = loc
        super().__init__(self.message, loc)

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}" if self.loc is not None else self.message


class NetlistWarning(UserWarning):
    """Something in the netlist is accepted but not modelled (or modelled differently from ngspice)."""


class DialectNote(UserWarning):
    """A note, not a problem: the dialect was detected from the text (``.backanno``, ``wavefile=``, ``pwrs()``)."""
