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

from circuitsim.circuit.checks import check_topology
from circuitsim.circuit.circuit import GROUND, Circuit, DeviceModel, FlatElement, ParamKind, ParamLeaf
from circuitsim.devices.catalog import canonical_name, model_parameter_status
from circuitsim.netlist import NetlistError, NetlistWarning
from circuitsim.netlist.ast import (
    BranchI,
    Element,
    Expr,
    Loc,
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
                    params: dict[str, Expr] = {}
                    for raw_name, pexpr in m.params.items():
                        pname = canonical_name(m.type, raw_name)
                        status = model_parameter_status(m.type, pname)
                        if status == "unknown":
                            raise NetlistError(f"unknown parameter {pname} for {m.type} model {m.name}", m.loc)
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
            if key not in sub.defaults:
                raise NetlistError(f"{el.name}: subcircuit {sub.name} has no parameter '{key}'", el.loc)
        for key, default in sub.defaults.items():
            if key in el.params:  # instance override, written in the parent's scope
                child.env[key] = self.value(el.params[key], prefix + key, frame, el.loc, ParamKind.LEARNABLE)
            else:
                child.env[key] = self.value(default, prefix + key, child, sub.loc or el.loc, ParamKind.LEARNABLE)
        self.define_params(sub.params, child, ParamKind.LEARNABLE)
        self.scope(child, depth + 1)

    def element(self, el: Element, frame: _Frame) -> None:
        name = frame.prefix + el.name
        if any(e.name == name for e in self.elements):
            raise NetlistError(f"element {name} is defined twice", el.loc)
        nodes = tuple(self.node(n, frame) for n in el.nodes)
        kind = el.kind
        flat = FlatElement(name, kind, nodes, el.loc)
        if kind in ("R", "C", "L", "E", "G") and el.value is not None:
            flat.value = self.value(
                el.value, name, frame, el.loc, ParamKind.LEARNABLE, positive=kind in _POSITIVE_KINDS
            )
        for key, expr in el.params.items():
            flat.params[key] = self.resolve(expr, frame, el.loc)
        if kind in ("D", "Q"):
            flat.model = self.model(el.model or "", frame, el.loc)
            wanted = {"D": ("D",), "Q": ("NPN", "PNP")}[kind]
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
        unused = set(self.overrides) - self.used_overrides
        if unused:
            known = ", ".join(p.name for p in self.netlist.params) or "none"
            raise NetlistError(f"--set {sorted(unused)[0]}: no such .param (the netlist has: {known})", None)
        self.scope(top)
        nodes = sorted(self.nodes, key=self.nodes.__getitem__)
        circuit = Circuit(self.netlist.title, nodes, self.elements, self.leaves, self.netlist)
        check_topology(circuit)
        return circuit


def build_circuit(netlist: Netlist, overrides: Mapping[str, float] | None = None) -> Circuit:
    """Flatten a parsed netlist into a :class:`Circuit`.

    ``overrides`` sets top-level ``.param`` values by name (as ``--set NAME=VALUE`` does),
    replacing the netlist's value or expression with a literal.
    """
    return _Builder(netlist, overrides or {}).run()
