"""Netlist AST -> flattened :class:`~circuitsim.circuit.circuit.Circuit`.

Subcircuits are expanded with hierarchical names (``XV1.RK``, node ``xv1.k``), every
literal number becomes a :class:`ParamLeaf`, and every other value becomes an
expression over leaves, so a pot written ``{t*250k}`` stays a differentiable function
of the knob ``t``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace

from circuitsim.circuit.checks import check_controls, check_topology, warn_negative_reactances
from circuitsim.circuit.circuit import GROUND, Circuit, DeviceModel, FlatElement, ParamKind, ParamLeaf
from circuitsim.devices.catalog import canonical_name, model_parameter_status
from circuitsim.devices.registry import family_for_letter
from circuitsim.netlist import NetlistError, NetlistWarning
from circuitsim.netlist.ast import (
    Binary,
    BranchI,
    Cond,
    Element,
    Expr,
    Loc,
    Model,
    Name,
    Netlist,
    NodeV,
    Num,
    ParamDef,
    Scope,
    SourceSpec,
    Subckt,
)

_BUILTIN_NAMES = {"pi", "e", "time", "temper", "hertz"}
_POSITIVE_KINDS = {"R", "C", "L"}
#: XSPICE potentiometer parameters and their defaults (ngspice src/xspice/icm/xtradev/potentiometer/ifspec.ifs)
POT_DEFAULTS = {"R": 1.0e5, "POSITION": 0.5, "LOG": 0.0, "LOG_MULTIPLIER": 1.0}
#: cfunc.mod clamps the wiper away from the ends: position <= 0 -> 1e-9, position >= 1 -> 0.999999999
POT_LIMITS = (1e-9, 0.999999999)
_MAX_DEPTH = 50


def transform(
    expr: Expr,
    name: Callable[[Name], Expr] | None = None,
    node: Callable[[str], str] | None = None,
    branch: Callable[[str], str] | None = None,
) -> Expr:
    """Rebuild an expression, replacing names, node names (in ``V()``) and branch names (in ``I()``)."""
    if isinstance(expr, Name):
        return name(expr) if name else expr
    if isinstance(expr, NodeV):
        if node is None:
            return expr
        return NodeV(node(expr.pos), node(expr.neg) if expr.neg is not None else None)
    if isinstance(expr, BranchI):
        return BranchI(branch(expr.source)) if branch else expr
    if isinstance(expr, Num):
        return expr
    changes = {}
    for f in fields(expr):  # type: ignore[arg-type]
        val = getattr(expr, f.name)
        if isinstance(val, Expr):
            changes[f.name] = transform(val, name, node, branch)
        elif isinstance(val, tuple) and val and isinstance(val[0], Expr):
            changes[f.name] = tuple(transform(v, name, node, branch) for v in val)
    return replace(expr, **changes)  # type: ignore[type-var]


@dataclass
class _Frame:
    """One level of the instance hierarchy while flattening."""

    prefix: str  # '' at top level, 'XV1.' inside instance XV1
    scope: Scope
    parent: _Frame | None
    env: dict[str, Expr]  # local .param name -> expression over leaves
    nodes: dict[str, str]  # local node name -> flattened node name
    models: dict[str, DeviceModel]

    def find_subckt(self, name: str) -> Subckt | None:
        frame: _Frame | None = self
        while frame is not None:
            if name in frame.scope.subckts:
                return frame.scope.subckts[name]
            frame = frame.parent
        return None


class _Builder:
    def __init__(self, netlist: Netlist, overrides: Mapping[str, float]):
        self.netlist = netlist
        self.overrides = {k.lower(): float(v) for k, v in overrides.items()}
        self.leaves: dict[str, ParamLeaf] = {}
        self.elements: list[FlatElement] = []
        self.nodes: dict[str, int] = {}
        self.used_overrides: set[str] = set()

    # ------------------------------------------------------------ leaves
    def leaf(self, name: str, num: Num, kind: ParamKind, loc: Loc, positive: bool = False) -> Name:
        if name in self.leaves:
            raise NetlistError(f"parameter name '{name}' is defined twice", loc)
        self.leaves[name] = ParamLeaf(name, float(num.value), kind, loc, num.span, positive)
        return Name(name)

    def resolve(self, expr: Expr, frame: _Frame, loc: Loc) -> Expr:
        """Substitute local ``.param`` names by their expressions over leaves."""

        def name(n: Name) -> Expr:
            f: _Frame | None = frame
            while f is not None:
                if n.name in f.env:
                    return f.env[n.name]
                f = f.parent
            if n.name in _BUILTIN_NAMES:
                return n
            raise NetlistError(f"undefined parameter '{n.name}'", loc)

        return transform(expr, name=name, node=lambda s: self.node_name(s, frame), branch=lambda s: frame.prefix + s)

    def value(self, expr: Expr, leaf_name: str, frame: _Frame, loc: Loc, kind: ParamKind, positive=False) -> Expr:
        """A literal becomes a leaf called ``leaf_name``; anything else is resolved."""
        if isinstance(expr, Num):
            return self.leaf(leaf_name, expr, kind, loc, positive)
        return self.resolve(expr, frame, loc)

    # ------------------------------------------------------------ nodes
    def node_name(self, local: str, frame: _Frame) -> str:
        local = local.lower()
        if local in ("0", "gnd"):
            return "0"
        if local in frame.nodes:
            return frame.nodes[local]
        return (frame.prefix.lower() + local) if frame.prefix else local

    def node(self, local: str, frame: _Frame) -> int:
        flat = self.node_name(local, frame)
        if flat == "0":
            return GROUND
        return self.nodes.setdefault(flat, len(self.nodes))

    # ------------------------------------------------------------ scopes
    def define_params(self, params: list[ParamDef], frame: _Frame, kind: ParamKind) -> None:
        pending = list(params)
        for p in pending:
            if frame.parent is None and p.name in self.overrides:
                self.used_overrides.add(p.name)
                frame.env[p.name] = self.leaf(p.name, Num(self.overrides[p.name], None), kind, p.loc)
            elif isinstance(p.expr, Num):
                frame.env[p.name] = self.leaf(frame.prefix + p.name, p.expr, kind, p.loc)
            else:
                frame.env[p.name] = self.resolve(p.expr, frame, p.loc)

    def model(self, name: str, frame: _Frame, loc: Loc) -> DeviceModel:
        key = name.upper()
        # models are resolved once per frame that defines them, so instances share leaves
        f: _Frame | None = frame
        while f is not None:
            if key in f.scope.models:
                if key not in f.models:
                    m = f.scope.models[key]
                    if m.type == "POTENTIOMETER":
                        raise NetlistError(f"model {m.name} is an XSPICE potentiometer, used by A elements", loc)
                    params: dict[str, Expr] = {}
                    self.ignored_strings(m)
                    for raw_name, pexpr in m.params.items():
                        pname = canonical_name(m.type, raw_name)
                        status = model_parameter_status(m.type, pname)
                        if self.word_value(m, raw_name, pexpr, f):
                            continue
                        if status == "unknown":  # ngspice 39: "unrecognized parameter (iave) - ignored"
                            warnings.warn(
                                f"{m.loc}: {m.type} model {m.name}: unrecognized parameter ({raw_name.lower()}) - "
                                "ignored, as ngspice 39 does",
                                NetlistWarning,
                                stacklevel=2,
                            )
                            continue
                        if status == "unmodelled":
                            warnings.warn(
                                f"{m.loc}: {m.type} model {m.name}: parameter {pname} is accepted but not modelled",
                                NetlistWarning,
                                stacklevel=2,
                            )
                            continue
                        if status == "silent":
                            continue
                        params[pname] = self.value(
                            pexpr, f"{f.prefix}{m.name}.{pname}", f, m.loc, ParamKind.LEARNABLE, positive=False
                        )
                    f.models[key] = DeviceModel(m.name, m.type, params, m.loc)
                return f.models[key]
            f = f.parent
        raise NetlistError(f"model '{name}' is not defined", loc)

    def ignored_strings(self, m: Model) -> None:
        """``mfg="OnSemi"``: a quoted string is never a number; ngspice warns and ignores it."""
        for key, text in m.strings.items():
            warnings.warn(
                f'{m.loc}: {m.type} model {m.name}: {key.lower()}="{text}" is not a number - ignored, as in ngspice 39',
                NetlistWarning,
                stacklevel=3,
            )

    def word_value(self, m: Model, key: str, expr: Expr, frame: _Frame) -> bool:
        """Whether ``key=expr`` is a word to ignore (``mfg=OnSemi``).

        ngspice 39 stops on a bare word that is no .param (an error here); LTspice and PSpice
        read it as text (a warning, and the parameter is ignored).
        """
        if not isinstance(expr, Name) or self.defined(expr.name, frame):
            return False
        if self.netlist.dialect == "ngspice":
            raise NetlistError(
                f"model {m.name}: {key.lower()}={expr.name} is a word, not a number or a .param; ngspice 39 stops "
                f'here (undefined parameter [{expr.name}]); quote it ({key.lower()}="...") or use --dialect ltspice',
                m.loc,
            )
        warnings.warn(
            f"{m.loc}: {m.type} model {m.name}: {key.lower()}={expr.name} is not a number - ignored "
            f"({self.netlist.dialect} reads it as text)",
            NetlistWarning,
            stacklevel=3,
        )
        return True

    def evaluates_to_zero(self, expr: Expr) -> bool:
        """Whether a value is exactly 0 at the netlist's parameter values (False if it cannot be evaluated)."""
        from circuitsim.netlist.expr import MATH_OPS, evaluate

        try:
            return float(evaluate(expr, {k: p.value for k, p in self.leaves.items()}, MATH_OPS)) == 0.0
        except NetlistError:
            return False

    @staticmethod
    def defined(name: str, frame: _Frame) -> bool:
        f: _Frame | None = frame
        while f is not None:
            if name in f.env:
                return True
            f = f.parent
        return name in _BUILTIN_NAMES

    def scope(self, frame: _Frame, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            raise NetlistError("subcircuits nested too deeply (recursive definition?)", frame.scope.loc)  # type: ignore[attr-defined]
        for el in frame.scope.elements:
            if el.kind == "X":
                self.instance(el, frame, depth)
            else:
                self.element(el, frame)

    def instance(self, el: Element, frame: _Frame, depth: int) -> None:
        sub = frame.find_subckt((el.model or "").upper())
        if sub is None:
            raise NetlistError(f"subcircuit '{el.model}' is not defined", el.loc)
        if len(el.nodes) != len(sub.ports):
            raise NetlistError(
                f"{el.name}: subcircuit {sub.name} has {len(sub.ports)} ports "
                f"({' '.join(sub.ports)}) but {len(el.nodes)} nodes were given",
                el.loc,
            )
        prefix = f"{frame.prefix}{el.name}."
        nodes = {port.lower(): self.node_name(n, frame) for port, n in zip(sub.ports, el.nodes)}
        child = _Frame(prefix, sub, frame, {}, nodes, {})
        for key in el.params:
            if key not in sub.defaults and self.netlist.dialect == "ngspice":
                raise NetlistError(f"{el.name}: subcircuit {sub.name} has no parameter '{key}'", el.loc)
        for key, default in sub.defaults.items():
            if key in el.params:  # instance override, written in the parent's scope
                child.env[key] = self.value(el.params[key], prefix + key, frame, el.loc, ParamKind.LEARNABLE)
            else:
                child.env[key] = self.value(default, prefix + key, child, sub.loc or el.loc, ParamKind.LEARNABLE)
        passed = set()
        for key, expr in el.params.items():  # LTspice/PSpice: parameters the .subckt line does not declare
            if key not in sub.defaults:
                child.env[key] = self.value(expr, prefix + key, frame, el.loc, ParamKind.LEARNABLE)
                passed.add(key)
        # a .param inside the subcircuit of a name the instance passes is that parameter's default, which the
        # instance overrides (LTspice: 'XU1 plus vdc_single V=10V' into '.subckt vdc_single 1 / .param v=0')
        self.define_params([p for p in sub.params if p.name not in passed], child, ParamKind.LEARNABLE)
        self.scope(child, depth + 1)

    def potentiometer(self, el: Element, frame: _Frame, name: str, nodes: tuple[int, ...]) -> None:
        """XSPICE ``potentiometer`` as two resistors, exactly as ngspice 39's cfunc.mod computes them.

        r0-wiper is ``position*r`` (log: ``r / 10^(position*log_multiplier)``), wiper-r1 the rest of
        ``r``; the position is clamped to [1e-9, 0.999999999].  The position is the control
        ``NAME.position`` (``--set ARV1.position=0.3`` or ``--set RV1=0.3``), ``r`` the learnable ``NAME.r``.
        """
        card = None
        f: _Frame | None = frame
        while f is not None and card is None:
            card = f.scope.models.get((el.model or "").upper())
            f = f.parent
        if card is None:
            raise NetlistError(f"{name}: model '{el.model}' is not defined", el.loc)
        if card.type != "POTENTIOMETER":
            raise NetlistError(
                f"{name}: model {card.name} is a {card.type} model; the only XSPICE code model supported is "
                "the potentiometer",
                el.loc,
            )
        self.ignored_strings(card)
        given: dict[str, Expr] = {}
        for key, expr in card.params.items():
            if key not in POT_DEFAULTS:
                warnings.warn(
                    f"{card.loc}: potentiometer model {card.name}: unrecognized parameter ({key.lower()}) - "
                    "ignored, as ngspice 39 does",
                    NetlistWarning,
                    stacklevel=2,
                )
            else:
                given[key] = expr
        log = given.get("LOG", Num(0.0))
        if isinstance(log, Name) and log.name in ("true", "false"):
            is_log = log.name == "true"
        elif isinstance(log, Num) and log.value in (0.0, 1.0):
            is_log = log.value == 1.0
        else:
            raise NetlistError(f"potentiometer model {card.name}: log must be true or false", card.loc)

        def param(key: str, leaf: str, kind: ParamKind, positive: bool) -> Expr:
            for alias in (f"{name}.{key}".lower(), (frame.prefix + el.name[1:]).lower()) if key == "POSITION" else ():
                if alias in self.overrides:  # --set ARV1.position=V or --set RV1=V
                    self.used_overrides.add(alias)
                    return self.leaf(leaf, Num(self.overrides[alias]), kind, el.loc)
            expr = given.get(key, Num(POT_DEFAULTS[key]))
            if key not in given:
                return self.leaf(leaf, Num(POT_DEFAULTS[key]), kind, card.loc, positive)
            return self.value(expr, leaf, frame, card.loc, kind, positive)

        ohms = param("R", f"{name}.r", ParamKind.LEARNABLE, True)
        raw = param("POSITION", f"{name}.position", ParamKind.CONTROL, False)
        lo, hi = POT_LIMITS
        pos = Cond(Binary("<=", raw, Num(0.0)), Num(lo), Cond(Binary(">=", raw, Num(1.0)), Num(hi), raw))
        if is_log:
            mult = param("LOG_MULTIPLIER", f"{name}.log_multiplier", ParamKind.FIXED, False)
            lower: Expr = Binary("/", ohms, Binary("^", Num(10.0), Binary("*", pos, mult)))
        else:
            lower = Binary("*", pos, ohms)
        upper = Binary("-", ohms, lower)
        r0, wiper, r1 = nodes
        for part, a, b, value in ((".R0", r0, wiper, lower), (".R1", wiper, r1, upper)):
            self.elements.append(FlatElement(name + part, "R", (a, b), el.loc, value=value))

    def element(self, el: Element, frame: _Frame) -> None:
        name = frame.prefix + el.name
        if any(e.name == name for e in self.elements):
            raise NetlistError(f"element {name} is defined twice", el.loc)
        nodes = tuple(self.node(n, frame) for n in el.nodes)
        kind = el.kind
        if kind == "A":
            self.potentiometer(el, frame, name, nodes)
            return
        flat = FlatElement(name, kind, nodes, el.loc)
        if kind in ("R", "C", "L", "E", "G", "F", "H") and el.value is not None:
            flat.value = self.value(
                el.value, name, frame, el.loc, ParamKind.LEARNABLE, positive=kind in _POSITIVE_KINDS
            )
        for key, expr in el.params.items():
            flat.params[key] = self.resolve(expr, frame, el.loc)
        if kind == "R" and flat.value is not None and self.evaluates_to_zero(flat.value):
            # ngspice 39 reads a resistance of 0 as 1 milliohm (checked against the binary), silently
            warnings.warn(f"{el.loc}: {name} has a resistance of 0; read as 1 milliohm, as ngspice 39 does",
                          NetlistWarning, stacklevel=2)
            flat.value = Cond(Binary("==", flat.value, Num(0.0)), Num(1e-3), flat.value)
        if kind in ("R", "C", "L", "F", "G") and "M" in flat.params:
            # m parallel copies, as ngspice's multiplier: R/m, L/m; C, F and G gains times m
            m = flat.params["M"]
            if flat.value is not None:
                flat.value = Binary("/" if kind in ("R", "L") else "*", flat.value, m)
            if "VALUE" in flat.params:
                flat.params["VALUE"] = Binary("*", flat.params["VALUE"], m)
        unmodelled = sorted({"RSER", "LSER", "RPAR", "CPAR", "SCALE"} & set(flat.params))
        if kind in ("R", "C", "L", "V", "I") and unmodelled:
            raise NetlistError(
                f"{name}: {unmodelled[0]}= (LTspice's parasitic of the element) is not supported; ngspice 39 rejects "
                "it too: write the parasitic as its own element",
                el.loc,
            )
        fam = family_for_letter(kind)
        if fam is not None:  # a registered device family (circuitsim/devices/registry.py)
            flat.model = self.model(el.model or "", frame, el.loc)
            wanted = fam.model_types
            if flat.model.type not in wanted:
                raise NetlistError(
                    f"{name}: model {flat.model.name} is a {flat.model.type} model, not {wanted[0]}", el.loc
                )
        if el.source is not None:
            src = el.source
            dc = None
            if src.dc is not None:
                dc = self.value(src.dc, name, frame, el.loc, ParamKind.FIXED)
            flat.source = SourceSpec(
                dc=dc,
                ac=src.ac,
                waveform=src.waveform,
                args=tuple(self.resolve(a, frame, el.loc) for a in src.args),
            )
        self.elements.append(flat)

    def run(self) -> Circuit:
        top = _Frame("", self.netlist, None, {}, {}, {})
        self.define_params(self.netlist.params, top, ParamKind.CONTROL)
        self.scope(top)
        unused = set(self.overrides) - self.used_overrides
        if unused:
            known = [p.name for p in self.netlist.params]
            known += [k for k, p in self.leaves.items() if k.endswith(".position") and p.kind == ParamKind.CONTROL]
            raise NetlistError(
                f"--set {sorted(unused)[0]}: no such .param or potentiometer (the netlist has: "
                f"{', '.join(known) or 'none'})",
                None,
            )
        nodes = sorted(self.nodes, key=self.nodes.__getitem__)
        circuit = Circuit(self.netlist.title, nodes, self.elements, self.leaves, self.netlist)
        check_controls(circuit)
        check_topology(circuit)
        warn_negative_reactances(circuit)
        return circuit


def build_circuit(netlist: Netlist, overrides: Mapping[str, float] | None = None) -> Circuit:
    """Flatten a parsed netlist into a :class:`Circuit`.

    ``overrides`` sets top-level ``.param`` values by name (as ``--set NAME=VALUE`` does),
    replacing the netlist's value or expression with a literal.
    """
    return _Builder(netlist, overrides or {}).run()
