"""The flattened circuit: elements and their connections, nothing else.

As in ACME.jl, a :class:`Circuit` only stores elements and connections; a formulation
(MNA, DK, ...) derives a discrete-time model from it.  Every numeric value is an
expression (:mod:`circuitsim.netlist.ast`) over *parameter leaves*: the literal numbers
of the netlist (``R1``, ``D1N914.IS``, ``drive``, ``XV1.RK``), each of which can be
fixed, learnable or a control.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from circuitsim.errors import UnknownNameError
from circuitsim.netlist.ast import Expr, Loc, Netlist, SourceSpec, Span

GROUND = -1
"""Node index of ground (node ``0``/``gnd``): not an unknown of any formulation."""


class ParamKind(enum.Enum):
    """How a parameter leaf is used: kept as written, learned from data, or set by a user (a knob)."""

    FIXED = "fixed"
    LEARNABLE = "learnable"
    CONTROL = "control"


@dataclass
class ParamLeaf:
    """One literal number of the netlist that the circuit depends on.

    ``name`` is its netlist name: an element (``R1``, ``XV1.RK``), a model parameter
    (``D1N914.IS``), a ``.param`` (``drive``) or a subcircuit parameter (``XV1.mu``).
    ``value`` is in SI units (ohms, farads, henries, volts, amperes, ...).
    """

    name: str
    value: float
    kind: ParamKind
    loc: Loc
    span: Span | None = None
    positive: bool = False  # R, C, L, IS, ...: a log-parametrisation is valid


@dataclass
class DeviceModel:
    """A resolved ``.model`` card: parameter expressions over leaves (only the ones given)."""

    name: str
    type: str  # 'D', 'NPN', 'PNP'
    params: dict[str, Expr]
    loc: Loc


@dataclass
class FlatElement:
    """One element after subcircuit flattening.

    ``nodes`` are indices into :attr:`Circuit.nodes` (``GROUND`` for ground).  ``value`` and
    ``params`` are expressions over parameter leaves; behavioural expressions (B, E/G
    ``VALUE``) refer to node voltages by flattened node name and to currents by flattened
    element name.
    """

    name: str
    kind: str
    nodes: tuple[int, ...]
    loc: Loc
    value: Expr | None = None
    params: dict[str, Expr] = field(default_factory=dict)
    model: DeviceModel | None = None
    source: SourceSpec | None = None


@dataclass
class Circuit:
    """A flattened circuit: node names, elements and parameter leaves."""

    title: str
    nodes: list[str]
    elements: list[FlatElement]
    params: dict[str, ParamLeaf]
    netlist: Netlist

    def node_index(self, name: str) -> int:
        """Index of a node by (case-insensitive) name; ground names give ``GROUND``."""
        key = name.lower()
        if key in ("0", "gnd"):
            return GROUND
        try:
            return self.nodes.index(key)
        except ValueError:
            raise UnknownNameError(f"no node named '{name}' (nodes: {', '.join(self.nodes)})") from None

    def input_source_name(self, requested: str = "VIN") -> str:
        """The source the audio drives: ``requested`` when the circuit has it; otherwise, for the
        default ``VIN``, the one LTspice ``V ... wavefile=FILE`` source (the input as the netlist
        itself declares it)."""
        names = {el.name for el in self.elements}
        if requested.upper() in names or requested.upper() != "VIN":
            return requested
        wave = [el.name for el in self.elements if el.source is not None and el.source.waveform == "WAVEFILE"]
        return wave[0] if len(wave) == 1 else requested

    def element(self, name: str) -> FlatElement:
        """An element by (case-insensitive) flattened name, e.g. ``VIN`` or ``XV1.RK``."""
        key = name.upper()
        for el in self.elements:
            if el.name == key:
                return el
        raise UnknownNameError(f"no element named '{name}'")
