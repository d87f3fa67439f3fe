"""The adaptor tree of a wave digital filter, built automatically from the circuit graph.

Leaves are the one-port elements (R, C, L, voltage sources that end up in series with a
resistance).  A series-parallel reduction of the element multigraph (Valdes, Tarjan & Lawler
1982) merges parallel edges into parallel adaptors and
edges meeting at a node of degree two into series adaptors.  What does not decompose (a bridge,
an op-amp modelled as a VCVS, several sources) becomes one R-type adaptor whose scattering
matrix comes from the MNA of its internal graph (Werner et al., DAFx-15, "Wave digital filter
adaptors for arbitrary topologies and multiport linear elements"; docs/wdf.md eq. (2)–(4)).  The root is

* a nonlinear one-port (a diode, an anti-parallel pair, any device whose ports and currents all
  sit on one node pair), whose child is a subtree or an R-type adaptor adapted towards it;
* an ideal voltage source with the same kind of child (linear circuits such as the FMV stack);
* otherwise an R-type root holding every remaining controlled source, ideal source and
  nonlinear device, with every subtree as a port (the worst case; it always exists).

Nodes that a nonlinear device, a controlled source or ground touch are never merged away, so
the root keeps every voltage its equations refer to.  docs/wdf.md describes the construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from circuitsim.circuit.circuit import GROUND, FlatElement
from circuitsim.netlist import NetlistError
from circuitsim.netlist.ast import Expr, Loc
from circuitsim.system.mna_system import MNATopology, Row

ONE_PORT_KINDS = ("R", "C", "L", "V")


@dataclass(eq=False)
class Leaf:
    """A one-port element: ``kind`` R (ohms), C (farads), L (henries) or V (ideal source, port resistance 0)."""

    name: str
    kind: str
    nodes: tuple[int, int]  # orientation: voltage n1 - n2, current into n1
    value: Expr | None = None  # R, C, L value expression (V: None)
    channel: int = -1  # source channel (V)
    state: int = -1  # state index (C, L)
    loc: Loc | None = None

    @property
    def zero_r(self) -> bool:
        return self.kind == "V"

    def label(self) -> str:
        return self.name


@dataclass(eq=False)
class Adaptor:
    """A series, parallel or R-type adaptor (``kind``); children carry an orientation sign.

    ``children[k] = (node, sign)``: ``sign`` is +1 when the child's orientation agrees with the
    adaptor's port orientation (series: along the chain; parallel: the same node pair).  R-type
    adaptors also list their port node pairs, internal nodes, the elements inside (controlled and
    ideal sources, and at the root the nonlinear devices) and the up-facing port (``None`` at the root).
    """

    kind: str  # 'series' | 'parallel' | 'rtype'
    children: list[tuple[Leaf | Adaptor, int]]
    ports: list[tuple[int, int]] = field(default_factory=list)  # R-type: node pair of each child port
    up: tuple[int, int] | None = None  # R-type: the node pair of the port facing the parent
    nodes: list[int] = field(default_factory=list)  # R-type: internal nodes (GROUND included if present)
    inside: list[FlatElement] = field(default_factory=list)  # R-type: linear elements inside
    chains: list[list[tuple[Leaf, int]]] = field(default_factory=list)  # R-type: series chains of ideal sources
    index: int = -1  # position in the tree's adaptor list (recomputation counters, describe)

    @property
    def zero_r(self) -> bool:
        return self.kind == "series" and all(c.zero_r for c, _ in self.children)


@dataclass
class Root:
    """The root: ``kind`` 'nonlinear' (one-port devices on ``nodes``), 'source' (an ideal voltage
    source chain on ``nodes``) or 'rtype' (``junction`` holds everything)."""

    kind: str
    nodes: tuple[int, int] | None
    child: tuple[Leaf | Adaptor, int] | None = None
    junction: Adaptor | None = None  # 'rtype'
    chain: list[tuple[Leaf, int]] = field(default_factory=list)  # 'source'
    devices: list[str] = field(default_factory=list)  # element names of the nonlinear devices at the root


@dataclass
class WDFTree:
    """The adaptor tree and the bookkeeping the realisation needs."""

    root: Root
    leaves: list[Leaf]
    adaptors: list[Adaptor]  # children before parents (the up-pass order)
    states: list[Leaf]  # C and L leaves in state order
    node_names: list[str]

    def node(self, i: int) -> str:
        return "0" if i == GROUND else self.node_names[i]


@dataclass(eq=False)
class _Edge:
    n1: int
    n2: int
    item: Leaf | Adaptor
    special: bool = False  # never merged (kept for the root / R-type)

    @property
    def mergeable(self) -> bool:
        return not self.special


def _row_nodes(row: Row) -> tuple[int, int]:
    pos = [i for i, c in row if c > 0]
    neg = [i for i, c in row if c < 0]
    return (pos[0] if pos else GROUND, neg[0] if neg else GROUND)


def _device_element_names(topo: MNATopology) -> list[str]:
    names = [d.element.name for d in topo.devices]
    for el in topo.circuit.elements:
        if el.kind == "B" or (el.kind in ("E", "G") and "VALUE" in el.params):
            names.append(el.name)
    return names


def _nonlinear_pair(topo: MNATopology) -> tuple[int, int] | None:
    """The node pair when every nonlinear port and every device output lies on it (a one-port), else None."""
    rows = list(topo.ports) + [col for col, _ in topo.outputs]
    if not rows:
        return None
    first = rows[0]
    key, flipped = frozenset(first), frozenset((i, -c) for i, c in first)
    if any(len(r) == 0 for r in rows) or not all(frozenset(r) in (key, flipped) for r in rows):
        return None
    if any(abs(c) != 1.0 for _, c in first):
        return None
    n1, n2 = _row_nodes(first)
    nodes = {i for i, _ in first}
    if any(i >= topo.n_nodes for i in nodes):
        return None  # a branch current
    return n1, n2


def build_tree(topo: MNATopology) -> WDFTree:
    """Decompose the circuit of ``topo`` into a WDF adaptor tree (never fails for lack of structure).

    Raises :class:`NetlistError` naming the element for what a WDF here cannot represent.
    """
    circuit = topo.circuit
    device_names = _device_element_names(topo)
    leaves: list[Leaf] = []
    edges: list[_Edge] = []
    protected: set[int] = {GROUND}
    inside: list[FlatElement] = []
    channels = {el.name: ch for ch, el in enumerate(topo.sources) if el is not None}
    # elements whose branch current a behavioural expression reads must keep their branch unknown
    branch_cols = {i for row in topo.ports for i, _ in row if i >= topo.n_nodes}
    branch_read = {name for name, idx in topo.branch.items() if idx in branch_cols}
    for name, ohms, pair in topo.resistors:  # device series resistances and GMIN conductances
        leaf = Leaf(name, "R", _row_nodes(pair), ohms)
        leaves.append(leaf)
        edges.append(_Edge(*leaf.nodes, leaf))
    for el in circuit.elements:
        k = el.kind
        if k in ("R", "C", "L") or (k == "V" and el.name not in branch_read):
            if k == "L" and el.name in branch_read:
                raise NetlistError(
                    f"{el.name}: a behavioural expression reads the inductor current I({el.name}); the WDF "
                    "formulation keeps inductors as one-port leaves and cannot expose it (use --method dk)", el.loc)
            leaf = Leaf(el.name, k, (el.nodes[0], el.nodes[1]), el.value if k != "V" else None,
                        channel=channels.get(el.name, -1), loc=el.loc)
            leaves.append(leaf)
            edges.append(_Edge(*leaf.nodes, leaf))
        elif el.name in device_names:
            protected.update(el.nodes)
        else:  # V read by an expression, I, E, G, F/H-like linear sources: inside the root / an R-type
            if k not in ("V", "I", "E", "G"):
                raise NetlistError(f"{el.name}: element kind {k} is not supported by the WDF formulation", el.loc)
            inside.append(el)
            protected.update(el.nodes)
    for dev in topo.devices:
        protected.update(dev.internal.values())
    for row in list(topo.ports) + [col for col, _ in topo.outputs]:
        protected.update(i for i, _ in row if i < topo.n_nodes)

    _reduce(edges, protected)

    # zero-resistance chains (ideal sources in series) cannot be ports: they go inside
    chains: list[tuple[_Edge, list[tuple[Leaf, int]]]] = []
    ports: list[_Edge] = []
    for e in edges:
        if e.item.zero_r:
            chains.append((e, _flatten_chain(e.item, 1)))
        else:
            ports.append(e)

    adaptors: list[Adaptor] = []
    pair = _nonlinear_pair(topo) if topo.blocks else None
    if topo.blocks and pair is not None:
        root = Root("nonlinear", pair, devices=device_names)
    elif not topo.blocks and not inside and len(chains) == 1:
        e, chain = chains[0]
        root = Root("source", (e.n1, e.n2), chain=chain)
        chains = []
    else:
        root = Root("rtype", None, devices=device_names)
    if root.kind in ("nonlinear", "source"):
        p, q = root.nodes
        direct = [e for e in ports if {e.n1, e.n2} == {p, q}]
        if not inside and not chains and len(ports) == 1 and direct:
            e = ports[0]
            root.child = (e.item, 1 if (e.n1, e.n2) == (p, q) else -1)
        elif not ports and not chains and not inside:
            raise NetlistError(f"{', '.join(device_names) or 'the source'}: nothing is connected to the root "
                               "element", None)
        else:
            rt = _rtype(ports, chains, inside, up=(p, q))
            root.child = (rt, 1)
    else:
        root.junction = _rtype(ports, chains, inside, up=None)
    _collect(root, adaptors)
    states = [lf for lf in leaves if lf.kind in ("C", "L")]
    for i, lf in enumerate(states):
        lf.state = i
    used = set()
    for a in adaptors:
        for c, _ in a.children:
            if isinstance(c, Leaf):
                used.add(id(c))
        for ch in a.chains:
            used.update(id(lf) for lf, _ in ch)
    if root.child is not None and isinstance(root.child[0], Leaf):
        used.add(id(root.child[0]))
    used.update(id(lf) for lf, _ in root.chain)
    missing = [lf.name for lf in leaves if id(lf) not in used]
    if missing:  # pragma: no cover - a bug in the reduction, not a user error
        raise RuntimeError(f"WDF tree lost elements {missing}")
    return WDFTree(root, leaves, adaptors, states, list(circuit.nodes) + topo.names[len(circuit.nodes):topo.n_nodes])


def _flatten_chain(item: Leaf | Adaptor, sign: int) -> list[tuple[Leaf, int]]:
    if isinstance(item, Leaf):
        return [(item, sign)]
    out: list[tuple[Leaf, int]] = []
    for c, s in item.children:
        out += _flatten_chain(c, sign * s)
    return out


def _rtype(ports: list[_Edge], chains: list, inside: list[FlatElement], up: tuple[int, int] | None) -> Adaptor:
    nodes: set[int] = set()
    for e in ports:
        nodes.update((e.n1, e.n2))
    for e, _ in chains:
        nodes.update((e.n1, e.n2))
    for el in inside:
        nodes.update(el.nodes)
    if up is not None:
        nodes.update(up)
    order = sorted(nodes, key=lambda n: (n != GROUND, n))
    rt = Adaptor("rtype", [(e.item, 1) for e in ports], ports=[(e.n1, e.n2) for e in ports], up=up,
                 nodes=order, inside=list(inside), chains=[c for _, c in chains])
    rt.chain_nodes = [(e.n1, e.n2) for e, _ in chains]  # type: ignore[attr-defined]
    return rt


def _collect(root: Root, adaptors: list[Adaptor]) -> None:
    def visit(item: Leaf | Adaptor) -> None:
        if isinstance(item, Adaptor):
            for c, _ in item.children:
                visit(c)
            item.index = len(adaptors)
            adaptors.append(item)

    if root.child is not None:
        visit(root.child[0])
    if root.junction is not None:
        visit(root.junction)


def _reduce(edges: list[_Edge], protected: set[int]) -> None:
    """Series-parallel reduction in place: merge until no parallel pair and no series node remain."""
    changed = True
    while changed:
        changed = False
        # parallel: mergeable edges with positive port resistance on the same node pair
        groups: dict[frozenset, list[_Edge]] = {}
        for e in edges:
            if e.mergeable and e.n1 != e.n2 and not e.item.zero_r:
                groups.setdefault(frozenset((e.n1, e.n2)), []).append(e)
        for group in groups.values():
            if len(group) < 2:
                continue
            ref = group[0]
            children = []
            for e in group:
                s = 1 if (e.n1, e.n2) == (ref.n1, ref.n2) else -1
                children += _absorb(e.item, s, "parallel")
                edges.remove(e)
            edges.append(_Edge(ref.n1, ref.n2, Adaptor("parallel", children)))
            changed = True
        if changed:
            continue
        # series: an unprotected node with exactly two incident edges, both mergeable
        incident: dict[int, list[_Edge]] = {}
        for e in edges:
            incident.setdefault(e.n1, []).append(e)
            if e.n2 != e.n1:
                incident.setdefault(e.n2, []).append(e)
        for node, es in incident.items():
            if node in protected or len(es) != 2 or not all(e.mergeable for e in es):
                continue
            e1, e2 = es
            if e1.n1 == e1.n2 or e2.n1 == e2.n2:
                continue
            u = e1.n2 if e1.n1 == node else e1.n1
            w = e2.n2 if e2.n1 == node else e2.n1
            if u == w:
                continue  # a loop hanging on one node: leave it to the R-type
            s1 = 1 if (e1.n1, e1.n2) == (u, node) else -1
            s2 = 1 if (e2.n1, e2.n2) == (node, w) else -1
            children = _absorb(e1.item, s1, "series") + _absorb(e2.item, s2, "series")
            edges.remove(e1)
            edges.remove(e2)
            edges.append(_Edge(u, w, Adaptor("series", children)))
            changed = True
            break


def _absorb(item: Leaf | Adaptor, sign: int, kind: str) -> list[tuple[Leaf | Adaptor, int]]:
    """Children for a new ``kind`` adaptor: an adaptor of the same kind is flattened into it."""
    if isinstance(item, Adaptor) and item.kind == kind:
        return [(c, s * sign) for c, s in item.children]
    return [(item, sign)]


__all__ = ["Adaptor", "Leaf", "Root", "WDFTree", "build_tree"]
