"""The port-Hamiltonian structure of a netlist: storage, dissipation, ports and the interconnection J.

Falaize & Hélie, "Passive guaranteed simulation of analog audio circuits: a port-Hamiltonian
approach", Applied Sciences 6(10):273, 2016 (§2-3).  Every branch of the circuit graph is one of

* **storage** -- capacitors (state ``q = C v``, ``H = q²/2C``) and inductors (``φ = L i``,
  ``H = φ²/2L``), whose efforts are ``∇H`` (eq. 4);
* **dissipation** -- resistors, diode and BJT junction currents, behavioural current sources
  (triode plate and grid currents), with ``z(w)·w >= 0`` (eq. 5);
* **ports** -- independent sources and ideal controlled voltage sources (an op-amp as a VCVS).

A normal tree of the graph (voltage sources, then capacitors, then dissipative branches, then
inductors, then current sources; Falaize & Hélie §3.2) labels each branch: tree branches are
*effort-controlled* (their voltage is an input of the structure), links are *flux-controlled*
(their current is).  With the reduced incidence matrices ``A_t`` (tree) and ``A_l`` (links) and
``D = A_t⁻¹ A_l`` (fundamental cutsets), Kirchhoff's laws read ``i_t = -D i_l``, ``v_l = Dᵀ v_t``:

    [i_t; v_l] = J [v_t; i_l],   J = [[0, -D], [Dᵀ, 0]]          (exactly skew-symmetric)

A netlist is not realizable when a voltage source closes a loop of voltage sources and
capacitors, or a current source closes a cutset of inductors and current sources (the
sub-matrix of eq. 17 to be inverted is singular): those raise a one-line
:class:`~circuitsim.netlist.NetlistError` naming the branch.  A loop of capacitors alone (or a
cutset of inductors alone) is realizable: one capacitor's voltage follows from the others
(a dependent state, labelled as such), which the discrete-gradient step handles unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from circuitsim.circuit.circuit import GROUND
from circuitsim.formulations.phs.charges import storage_law
from circuitsim.netlist import NetlistError
from circuitsim.system.mna_system import MNATopology

# normal-tree priority (lower first): voltage-like ports, capacitors, dissipation, inductors, current sources
_PRIORITY = {"V": 0, "C": 1, "R": 2, "L": 3, "I": 4}


@dataclass
class Branch:
    """One edge of the circuit graph (``a`` -> ``b``, node indices of the MNA unknowns, -1 = ground)."""

    name: str  # element name, e.g. ``C1``, ``Q1.be``, ``D1.RS``
    role: str  # 'storage' | 'dissipation' | 'port'
    kind: str  # normal-tree class: 'V' (effort source), 'C', 'R' (either), 'L', 'I' (flux source)
    a: int
    b: int
    what: str  # in words: 'capacitor', 'diode junction current', ...
    control: str = ""  # 'effort' (tree) | 'flux' (link), set by the realizability analysis
    dependent: bool = False  # a capacitor closing a capacitor loop / an inductor in an inductor cutset


@dataclass
class PHStructure:
    """Branches of the port-Hamiltonian graph with their labels, and the interconnection matrix J."""

    branches: list[Branch]
    tree: list[int]  # indices into branches
    links: list[int]
    J: np.ndarray  # (n_branches, n_branches), entries in {-1, 0, 1}, J = -Jᵀ
    notes: list[str] = field(default_factory=list)

    def by_role(self, role: str) -> list[Branch]:
        return [b for b in self.branches if b.role == role]

    def describe(self) -> str:
        """The structure in words: storage, dissipation and port lists and J's size."""

        def line(b: Branch) -> str:
            ctl = "effort-controlled" if b.control == "effort" else "flux-controlled"
            dep = ", dependent state" if b.dependent else ""
            return f"  {b.name:<12} {b.what} ({ctl}{dep})"

        out = []
        for role, title in (("storage", "Storage"), ("dissipation", "Dissipation"), ("port", "Ports")):
            items = self.by_role(role)
            out.append(f"{title} ({len(items)}):")
            out.extend(line(b) for b in items)
        n = self.J.shape[0]
        out.append(f"J: {n} x {n}, skew-symmetric ({len(self.tree)} effort-controlled tree branches, "
                   f"{len(self.links)} flux-controlled links)")
        out.extend(self.notes)
        return "\n".join(out)


def _ends(row: tuple[tuple[int, float], ...]) -> tuple[int, int]:
    a = next((i for i, c in row if c > 0), GROUND)
    b = next((i for i, c in row if c < 0), GROUND)
    return a, b


def graph_branches(topo: MNATopology) -> list[Branch]:
    """Every branch of the circuit graph with its port-Hamiltonian role (Falaize & Hélie 2016, §2.2)."""
    out: list[Branch] = []
    for name, _, pair in topo.resistors:  # device series resistances and GMIN
        out.append(Branch(name, "dissipation", "R", *_ends(pair), "resistor (device)"))
    for el in topo.circuit.elements:
        k, nd = el.kind, el.nodes
        if k == "R":
            out.append(Branch(el.name, "dissipation", "R", nd[0], nd[1], "resistor"))
        elif k == "C":
            out.append(Branch(el.name, "storage", "C", nd[0], nd[1], "capacitor, H = q²/2C"))
        elif k == "L":
            out.append(Branch(el.name, "storage", "L", nd[0], nd[1], "inductor, H = φ²/2L"))
        elif k == "V":
            out.append(Branch(el.name, "port", "V", nd[0], nd[1], "independent voltage source"))
        elif k == "I":
            out.append(Branch(el.name, "port", "I", nd[0], nd[1], "independent current source"))
        elif k == "E":
            what = "behavioural voltage source" if "VALUE" in el.params else "ideal VCVS (op-amp)"
            out.append(Branch(el.name, "port", "V", nd[0], nd[1], what))
        elif k == "H":
            out.append(Branch(el.name, "port", "V", nd[0], nd[1], "ideal CCVS"))
        elif k == "F":
            out.append(Branch(el.name, "port", "I", nd[0], nd[1], "ideal CCCS"))
        elif k == "B" and "V" in el.params:
            out.append(Branch(el.name, "port", "V", nd[0], nd[1], "behavioural voltage source"))
        elif k == "B" or (k == "G" and "VALUE" in el.params):
            out.append(Branch(el.name, "dissipation", "R", nd[0], nd[1], "behavioural current source"))
        elif k == "G":
            own = set(nd[2:4]) == set(nd[0:2])  # controlled by its own terminals: a conductance
            role, what = ("dissipation", "conductance (VCCS on its own terminals)") if own else (
                "port", "ideal VCCS")
            out.append(Branch(el.name, role, "R" if own else "I", nd[0], nd[1], what))
    for dev in topo.devices:  # every output of a registered device family (circuitsim/devices/family.py)
        t, name = dev.internal, dev.element.name
        given = set(dev.element.model.params)
        currents = sum(not o.charge for o in dev.family.outputs)
        for o in dev.family.outputs:
            if o.charge and not (given & dev.family.charge_params):
                continue
            label = name if (currents == 1 and not o.charge) else f"{name}.{o.name}"
            if o.charge:
                law = storage_law(dev.family, o.name, dev.family.features(given))
                out.append(Branch(label, "storage", "C", t[o.plus], t[o.minus],
                                  f"{dev.family.name} junction charge, H(q) = ∫ v dq (discrete gradient)"))
                if not isinstance(law, str) and law.modulated:  # docs/phs.md, "Nonlinear storage"
                    out.append(Branch(f"{label}.mod", "port", "I", t[o.plus], t[o.minus],
                                      "modulated charge (base-charge / high-injection part of the transit charge)"))
            else:
                out.append(Branch(label, "dissipation", "R", t[o.plus], t[o.minus],
                                  f"{dev.family.name} junction current"))
    return out


class _Forest:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, i: int) -> int:
        self.parent.setdefault(i, i)
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        self.parent[ra] = rb
        return True


def _incidence(branches: list[Branch], idx: list[int], nodes: list[int]) -> np.ndarray:
    pos = {n: k for k, n in enumerate(nodes)}
    a = np.zeros((len(nodes), len(idx)))
    for j, bi in enumerate(idx):
        br = branches[bi]
        if br.a in pos:
            a[pos[br.a], j] += 1.0
        if br.b in pos:
            a[pos[br.b], j] -= 1.0
    return a


def analyse(topo: MNATopology) -> PHStructure:
    """Label every branch effort- or flux-controlled and build J; raise NetlistError if not realizable."""
    branches = graph_branches(topo)
    loc = {el.name: el.loc for el in topo.circuit.elements}
    order = sorted(range(len(branches)), key=lambda i: _PRIORITY[branches[i].kind])
    forest = _Forest()
    tree: list[int] = []
    links: list[int] = []
    for i in order:
        br = branches[i]
        if br.a == br.b:
            raise NetlistError(f"{br.name}: both terminals on the same node", loc.get(br.name))
        if forest.union(br.a, br.b):
            tree.append(i)
            br.control = "effort"
        else:
            links.append(i)
            br.control = "flux"
    # reduced incidence: every node except one per connected part (ground where it is in that part)
    nodes = sorted({n for br in branches for n in (br.a, br.b)})
    roots: dict[int, int] = {}
    for n in [GROUND] + nodes:
        roots.setdefault(forest.find(n), n)
    reduced = [n for n in nodes if roots[forest.find(n)] != n]
    a_t = _incidence(branches, tree, reduced)
    a_l = _incidence(branches, links, reduced)
    d = np.linalg.solve(a_t, a_l) if tree else np.zeros((0, len(links)))
    d_int = np.rint(d)
    if not np.allclose(d, d_int, atol=1e-9):  # a tree's incidence is unimodular: D is in {-1, 0, 1}
        raise RuntimeError("fundamental cutset matrix is not integral")
    notes: list[str] = []

    def names(rows: list[int]) -> str:
        return ", ".join(branches[r].name for r in rows)

    def dependent(br: Branch, sourced: bool, rows: list[int], words: tuple[str, str, str, str]) -> None:
        # a capacitor closing a loop of capacitors (an inductor in a cutset of inductors) is a dependent state;
        # with a source of its own kind there, its voltage (current) is imposed: not realizable (F&H §3.2)
        rel, what, qty, remedy = words
        if sourced:
            raise NetlistError(
                f"{br.name}: {rel} {what} and {qty} sources ({names(rows)}); its {qty} is imposed by the sources, "
                f"not realizable as a port-Hamiltonian system (add a {remedy} resistance)", loc.get(br.name))
        br.dependent = True
        notes.append(f"{br.name} {rel} {what} ({names(rows)}): a dependent state")

    for j, li in enumerate(links):  # fundamental loops: the link plus the tree branches with D[t, j] != 0
        br = branches[li]
        loop = [tree[t] for t in np.nonzero(d_int[:, j])[0]]
        kinds = {branches[t].kind for t in loop}
        if br.kind == "V":
            raise NetlistError(
                f"{br.name}: closes a loop of voltage sources and capacitors ({names(loop)}); not realizable as a "
                "port-Hamiltonian system (add a series resistance)", loc.get(br.name.split(".")[0]))
        if br.kind == "C" and kinds <= {"V", "C"}:
            dependent(br, "V" in kinds, loop, ("closes a loop of", "capacitors", "voltage", "series"))
    for t, ti in enumerate(tree):  # fundamental cutsets: the tree branch plus the links with D[t, l] != 0
        br = branches[ti]
        cut = [links[j] for j in np.nonzero(d_int[t])[0]]
        kinds = {branches[c].kind for c in cut}
        if br.kind == "I":
            raise NetlistError(
                f"{br.name}: closes a cutset of inductors and current sources ({names(cut) or 'nothing else'}); "
                "not realizable as a port-Hamiltonian system (add a parallel resistance)",
                loc.get(br.name))
        if br.kind == "L" and kinds <= {"I", "L"}:
            dependent(br, "I" in kinds, cut, ("lies in a cutset of", "inductors", "current", "parallel"))
    nt, nl = len(tree), len(links)
    J = np.zeros((nt + nl, nt + nl))
    J[:nt, nt:] = -d_int
    J[nt:, :nt] = d_int.T
    perm = tree + links  # J in the order [tree; links]; reorder to the branch order
    inv = np.argsort(perm)
    J = J[np.ix_(inv, inv)]
    return PHStructure(branches, tree, links, J, notes)


__all__ = ["Branch", "PHStructure", "analyse", "graph_branches"]
