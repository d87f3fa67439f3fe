"""Netlist abstract syntax tree: what the parser produces and the circuit builder consumes.

Names are normalised: element, model and subcircuit names to upper case (``R1``,
``D1N914``), node names and ``.param`` names to lower case, model parameter names to
upper case.  Every statement keeps its :class:`Loc` so later stages can report
``file:line`` errors, and every literal number keeps its :class:`Span` so a fitted
netlist can be written back as the original text with only the numbers changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Loc:
    """Where a statement starts: file path and 1-based physical line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Span:
    """Exact text range of a literal: 1-based physical line, 0-based [start, end) columns."""

    file: str
    line: int
    start: int
    end: int


# ---------------------------------------------------------------- expressions


class Expr:
    """Base of expression nodes (immutable)."""


@dataclass(frozen=True)
class Num(Expr):
    value: float
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Name(Expr):
    name: str  # lower case .param name, or a builtin constant (pi, e)


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # '-', '+', '!'
    arg: Expr


@dataclass(frozen=True)
class Binary(Expr):
    op: str  # '+', '-', '*', '/', '^' ('**' is normalised to '^'), '<' '>' '<=' '>=' '==' '!=' '&&' '||'
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Call(Expr):
    func: str  # lower case function name
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Cond(Expr):
    cond: Expr
    then: Expr
    other: Expr


@dataclass(frozen=True)
class NodeV(Expr):
    """``V(pos)`` or ``V(pos, neg)`` in a behavioural expression (node names lower case)."""

    pos: str
    neg: str | None = None


@dataclass(frozen=True)
class BranchI(Expr):
    """``I(Vname)``: the current through a voltage source (element name upper case)."""

    source: str


# ---------------------------------------------------------------- statements


@dataclass
class SourceSpec:
    """Independent V/I source: DC value, AC (magnitude, phase) and a transient waveform."""

    dc: Expr | None = None
    ac: tuple[Expr, Expr] | None = None
    waveform: str | None = None  # 'SIN', 'PWL', 'PULSE', 'EXP', or 'WAVEFILE' (LTspice: ``file`` is set)
    args: tuple[Expr, ...] = ()
    file: str | None = None  # LTspice ``wavefile=FILE``: the audio file, as written


@dataclass
class Element:
    """One element line.  ``kind`` is its first letter (R C L V I E G B D Q X).

    - R/C/L: ``value`` is the resistance (ohms) / capacitance (farads) / inductance (henries).
    - V/I: ``source`` is set, ``value`` is None.
    - E/G linear: nodes = [out+, out-, ctrl+, ctrl-], ``value`` is the gain.
      E/G with ``VALUE={expr}``: nodes = [out+, out-], ``params['VALUE']`` is the expression.
    - B: nodes = [n+, n-], ``params['V']`` or ``params['I']`` is the expression.
    - D/Q: ``model`` is the model name; instance parameters (AREA, M, ...) in ``params``;
      a bare area number is stored as ``params['AREA']``.  Q may have 3 or 4 nodes.
    - X: ``model`` is the subcircuit name; ``params`` holds ``name=value`` overrides (lower case keys).
    - F/H: nodes = [out+, out-], ``params['CONTROL']`` is ``BranchI(Vname)``, ``value`` the gain
      (F, unitless) or transresistance (H, ohms).
    - A (XSPICE): nodes = [r0, wiper, r1], ``model`` is a ``potentiometer`` model name.
    """

    name: str
    kind: str
    nodes: list[str]
    loc: Loc
    value: Expr | None = None
    model: str | None = None
    params: dict[str, Expr] = field(default_factory=dict)
    source: SourceSpec | None = None


@dataclass
class Model:
    """``.model NAME TYPE (P=V ...)``; ``type`` upper case: 'D', 'NPN', 'PNP', 'POTENTIOMETER'.

    ``strings`` holds the parameters whose value is a double-quoted string (``mfg="OnSemi"``):
    never a number, so ngspice ignores them with a warning.
    """

    name: str
    type: str
    params: dict[str, Expr]
    loc: Loc
    strings: dict[str, str] = field(default_factory=dict)


@dataclass
class ParamDef:
    """``.param name = expr`` (name lower case)."""

    name: str
    expr: Expr
    loc: Loc


@dataclass
class Scope:
    """Contents shared by the top level and by a subcircuit body."""

    elements: list[Element] = field(default_factory=list)
    models: dict[str, Model] = field(default_factory=dict)
    subckts: dict[str, Subckt] = field(default_factory=dict)
    params: list[ParamDef] = field(default_factory=list)


@dataclass
class Subckt(Scope):
    """``.subckt NAME ports... params: a=1 b=2`` ... ``.ends``."""

    name: str = ""
    ports: list[str] = field(default_factory=list)
    defaults: dict[str, Expr] = field(default_factory=dict)  # params: defaults, lower case keys
    loc: Loc | None = None


@dataclass
class Control:
    """An analysis/control line (.tran .ac .op .meas .options, or a .control block), kept verbatim."""

    text: str
    loc: Loc


@dataclass
class Netlist(Scope):
    """A parsed top-level netlist.  ``sources`` maps each file read (main and includes) to its lines."""

    title: str = ""
    path: str = "<string>"
    controls: list[Control] = field(default_factory=list)
    sources: dict[str, list[str]] = field(default_factory=dict)
    # added by the parser: nodes named in ``.global`` (lower case; ground is never listed).
    # ``sources`` lines keep their line endings, so ``''.join(lines)`` is the file's exact text.
    globals: list[str] = field(default_factory=list)
    # the dialect the text was read in ('ngspice', 'ltspice', 'pspice') and, when it was
    # auto-detected, the one-line note saying from what (None when given or ngspice by default)
    dialect: str = "ngspice"
    dialect_note: str | None = None
