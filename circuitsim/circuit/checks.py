"""Topology checks run on every circuit: ground, floating nodes, voltage-source loops; negative C and L."""

from __future__ import annotations

import warnings

import networkx as nx

from circuitsim.circuit.circuit import GROUND, Circuit
from circuitsim.devices.registry import family_for_letter
from circuitsim.netlist import NetlistError, NetlistWarning
from circuitsim.netlist.ast import BranchI
from circuitsim.netlist.expr import MATH_OPS, evaluate

# Elements whose terminals are joined by a DC path (a current can flow between any two of them).
_CONDUCTING = {"R", "L", "V", "D", "Q", "E", "B", "H"}
# Elements that fix a voltage between their first two nodes (a loop of them is over-determined at DC).
_VOLTAGE_DEFINING = {"V", "L", "E", "H"}


def check_controls(circuit: Circuit) -> None:
    """Every F/H source reads the current of an element that has a branch current (V, L, E, H, B with V=)."""
    with_branch = {el.name for el in circuit.elements if el.kind in _VOLTAGE_DEFINING or "V" in el.params}
    for el in circuit.elements:
        ctrl = el.params.get("CONTROL") if el.kind in ("F", "H") else None
        if isinstance(ctrl, BranchI) and ctrl.source not in with_branch:
            raise NetlistError(
                f"{el.name}: controlling source {ctrl.source} is not a voltage source, inductor or E/H/B voltage "
                "source of the circuit",
                el.loc,
            )


def warn_negative_reactances(circuit: Circuit) -> None:
    """A negative capacitance or inductance is legal (ngspice accepts it) but rarely meant: warn, naming it."""
    leaves = {k: p.value for k, p in circuit.params.items()}
    for el in circuit.elements:
        if el.kind not in ("C", "L") or el.value is None:
            continue
        try:
            value = float(evaluate(el.value, leaves, MATH_OPS, el.loc))
        except NetlistError:
            continue  # reported where the value is used
        if value < 0:
            what = "capacitance" if el.kind == "C" else "inductance"
            warnings.warn(
                f"{el.loc}: {el.name} has a negative {what} ({value:g}); ngspice accepts it, but the circuit "
                "may be unstable",
                NetlistWarning,
                stacklevel=3,
            )


def _name(circuit: Circuit, i: int) -> str:
    return "0" if i == GROUND else circuit.nodes[i]


def check_topology(circuit: Circuit) -> None:
    """Raise :class:`NetlistError` naming the nodes when the circuit cannot have a DC solution."""
    if not any(GROUND in el.nodes for el in circuit.elements):
        raise NetlistError("the circuit has no ground: connect something to node 0", None)

    dc = nx.Graph()
    dc.add_nodes_from(range(-1, len(circuit.nodes)))
    for el in circuit.elements:
        if el.kind not in _CONDUCTING and family_for_letter(el.kind) is None:  # devices conduct
            continue
        ends = el.nodes[:2] if el.kind in ("E", "B", "H") else el.nodes
        for a, b in zip(ends, ends[1:]):
            dc.add_edge(a, b)
    floating = sorted(set(dc.nodes) - nx.node_connected_component(dc, GROUND))
    if floating:
        names = ", ".join(_name(circuit, i) for i in floating)
        raise NetlistError(
            f"node(s) {names} have no DC path to ground (only capacitors or current sources connect them)",
            None,
        )

    loops = nx.MultiGraph()
    for el in circuit.elements:
        if el.kind in _VOLTAGE_DEFINING or (el.kind == "B" and "V" in el.params):
            a, b = el.nodes[:2]
            if a == b:
                raise NetlistError(f"{el.name} is shorted: both terminals on node {_name(circuit, a)}", el.loc)
            if loops.has_node(a) and loops.has_node(b) and nx.has_path(loops, a, b):
                path = nx.shortest_path(loops, a, b)
                names = " -> ".join(_name(circuit, i) for i in path + [a])
                raise NetlistError(
                    f"{el.name} closes a loop of voltage sources/inductors through nodes {names}", el.loc
                )
            loops.add_edge(a, b)
