"""Port resistances, scattering and wave propagation of a WDF adaptor tree, in torch.

Conventions (Fettweis 1986; Werner et al., DAFx-15): at every port ``a = v + R i`` and
``b = v - R i`` with ``i`` flowing into the element (into the adaptor on adaptor ports).
Leaves under the bilinear transform: resistor ``b = 0``; capacitor ``R = T/(2C)``, ``b[n] = a[n-1]``;
inductor ``R = 2L/T``, ``b[n] = -a[n-1]``; ideal voltage source in a series chain ``R = 0``, ``b = V``.

Adapted series adaptor (docs/wdf.md eq. (5)), up port ``R = sum R_k``::       b_up = sum s_k a_k,
                                                          b_k  = a_k + s_k (R_k/R_up)(a_up - b_up)
Adapted parallel adaptor (eq. (6)), ``G_up = sum G_k``::           b_up = sum (G_k/G_up) s_k a_k,
                                                          b_k  = s_k (a_up + b_up) - a_k
(``a_k`` the child's reflected wave, ``b_k`` the wave sent to it, ``s_k`` its orientation sign.)

R-type adaptor (Werner, Smith & Abel, DAFx-15; docs/wdf.md eq. (2)–(4)): each port is replaced by its Thévenin
equivalent (source ``a_k``, resistance ``R_k``), written here in Norton form (conductance ``1/R_k``
and current ``a_k/R_k``); with ``X`` the MNA matrix of the internal graph and ``P`` the port
incidence::

    X z = P R⁻¹ a + Bu s,    v = Pᵀ z,    b = 2 v - a    =>    S = 2 Pᵀ X⁻¹ P R⁻¹ - I

which is Werner's ``S = I + 2 R_p [0 I] X⁻¹ [0 I]ᵀ`` written with Norton instead of Thévenin
branches.  The port facing the parent is adapted with ``R_up`` equal to the Thévenin resistance
seen into it (``Pᵀ_up X₀⁻¹ P_up``, the other ports terminated, sources off), so ``S_up,up = 0``.

The propagation functions are written for waves of any trailing shape: with basis vectors as
waves they *compose* the tree into the per-sample state-space maps the compiled kernel runs
(:mod:`circuitsim.formulations.wdf.realize`); with numbers they *are* the plain-torch WDF (the
test oracle, :mod:`circuitsim.formulations.wdf.oracle`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from circuitsim.circuit.circuit import GROUND
from circuitsim.formulations.wdf.tree import Adaptor, Leaf, WDFTree
from circuitsim.netlist import NetlistError
from circuitsim.netlist.expr import TORCH_OPS, evaluate
from circuitsim.system.mna_system import DTYPE, MNATopology, _pair


@dataclass
class RTypeData:
    """Numbers of one R-type adaptor (or the R-type root): see the module docstring."""

    S: torch.Tensor | None  # (m+1, m+1) scattering, ports = children then up (None at the root)
    T: torch.Tensor | None  # (m+1, Nu) source-to-reflected-wave map (None at the root)
    Zp: torch.Tensor  # (nz, m[+1]) internal unknowns per port wave: X⁻¹ P R⁻¹
    Zs: torch.Tensor  # (nz, Nu) internal unknowns per source value: X⁻¹ Bu
    R_up: torch.Tensor | None
    # root only: device maps
    Zq: torch.Tensor | None = None  # (nz, Nf) X⁻¹ Wq (charge history)
    Zf: torch.Tensor | None = None  # (nz, Nf) -X⁻¹ (Wi + 2/T Wq)
    Nv: torch.Tensor | None = None  # (Nports, nz)
    Pt: torch.Tensor | None = None  # (m, nz) port voltage selector
    unknowns: list[int] = field(default_factory=list)  # node ids (then -2 - k for branch k) of z


@dataclass
class _RTypeStructure:
    """What :meth:`Adapter._rtype` needs of an R-type that no value changes (built once per adaptor)."""

    unknowns: list[int]  # node ids (then -2 - k for branch k, -1 for chains) of z
    ports: list  # (n1, n2) per port: children, then up
    P: torch.Tensor  # (nz, ports) port incidence
    X: torch.Tensor  # (nz, nz) incidence rows of branches and chains
    Bu: torch.Tensor  # (nz, Nu) source incidence
    gains: list  # (row, column, coefficient, E or G element) value stamps into X
    maps: tuple[torch.Tensor, torch.Tensor] | None  # root: Nv and [Wq, Wi + 2/T Wq]


@dataclass
class Adapted:
    """Port resistances of every leaf and adaptor and the adaptors' scattering data at given values."""

    R: dict[int, torch.Tensor]  # id(item) -> port resistance facing up (ohms)
    coeff: dict[int, torch.Tensor]  # series: R_k/R_up, parallel: G_k/G_up (per child)
    rtype: dict[int, RTypeData]
    root: RTypeData | None  # R-type root
    root_R: torch.Tensor | None  # one-port roots: the child's port resistance


class Adapter:
    """Computes :class:`Adapted` for parameter values, re-adapting only what changed.

    An adaptor is recomputed only when a port resistance of one of its children (or a value of an
    element inside it) differs from the last call, so a knob re-adapts the adaptors on the path
    from its leaves to the root and nothing else (chowdsp_wdf propagates impedance changes the same
    way).  ``recomputed[k]`` counts the recomputations of adaptor ``k`` (``tree.adaptors`` order);
    ``recomputed[-1]`` the root.  Reuse happens only without autograd (inference, knob turning).
    """

    def __init__(self, tree: WDFTree, topo: MNATopology, sample_rate: float):
        self.tree = tree
        self.topo = topo
        self.fs = float(sample_rate)
        self.recomputed: dict[int, int] = {a.index: 0 for a in tree.adaptors}
        self.recomputed[-1] = 0
        self._memo: dict[int, tuple[tuple, object]] = {}
        self._structures: dict[int, _RTypeStructure] = {}

    def _ev(self, expr, env):  # noqa: ANN001
        return evaluate(expr, env, TORCH_OPS)

    def leaf_R(self, leaf: Leaf, env: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if leaf.kind == "R":
            return torch.as_tensor(self._ev(leaf.value, env), dtype=DTYPE)
        if leaf.kind == "C":
            # torch.reciprocal: one autograd node (1.0 / t records a reciprocal and a product by 1)
            return torch.reciprocal(2.0 * self.fs * torch.as_tensor(self._ev(leaf.value, env), dtype=DTYPE))
        if leaf.kind == "L":
            return 2.0 * self.fs * torch.as_tensor(self._ev(leaf.value, env), dtype=DTYPE)
        return torch.zeros((), dtype=DTYPE)

    def _reuse(self, key_index: int, inputs: list[torch.Tensor], build: Callable[[], object]) -> object:
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):  # recorded: always built, not kept
            self.recomputed[key_index] += 1
            self._memo.pop(key_index, None)
            return build()
        key = tuple(float(t) for t in inputs)
        hit = self._memo.get(key_index)
        if hit is not None and hit[0] == key:
            return hit[1]
        self.recomputed[key_index] += 1
        value = build()
        self._memo[key_index] = (key, value)
        return value

    def adapt(self, env: Mapping[str, torch.Tensor], theta_m=None) -> Adapted:  # noqa: ANN001
        """Port resistances and scattering at the values ``env`` (tensors by leaf name)."""
        tree = self.tree
        R: dict[int, torch.Tensor] = {}
        coeff: dict[int, torch.Tensor] = {}
        rdata: dict[int, RTypeData] = {}
        for lf in tree.leaves:
            R[id(lf)] = self.leaf_R(lf, env)
        for a in tree.adaptors:
            rs = [R[id(c)] for c, _ in a.children]
            if a.kind == "series":
                r_up, cf = self._reuse(a.index, rs, lambda rs=rs: _series(rs))
            elif a.kind == "parallel":
                r_up, cf = self._reuse(a.index, rs, lambda rs=rs: _parallel(rs))
            else:
                vals = self._inside_values(a, env)
                data = self._reuse(a.index, rs + vals, lambda a=a, rs=rs: self._rtype(a, rs, env))
                rdata[id(a)] = data
                r_up, cf = data.R_up, None
            if r_up is not None:
                R[id(a)] = r_up
            if cf is not None:
                coeff[id(a)] = cf
        root = tree.root
        root_data = None
        root_R = None
        if root.kind == "rtype":
            root_data = rdata[id(root.junction)]
        else:
            root_R = R[id(root.child[0])]
            self.recomputed[-1] += 1  # the one-port root reads the child's resistance: nothing to build
        return Adapted(R, coeff, rdata, root_data, root_R)

    def _inside_values(self, a: Adaptor, env: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        return [torch.as_tensor(self._ev(el.value, env), dtype=DTYPE) for el in a.inside
                if el.kind in ("E", "G") and el.value is not None and "VALUE" not in el.params]

    def _rtype_structure(self, a: Adaptor) -> _RTypeStructure:
        """The value-independent part of an R-type's internal MNA (built once per adaptor): unknowns,
        port incidence ``P``, the incidence rows of branches and chains in ``X``, ``Bu`` and the root's
        device maps."""
        hit = self._structures.get(a.index)
        if hit is not None:
            return hit
        topo = self.topo
        is_root = a.up is None
        ref = GROUND if GROUND in a.nodes else a.nodes[0]
        node_ids = [n for n in a.nodes if n != ref]
        local: dict[int, int] = {n: i for i, n in enumerate(node_ids)}
        unknowns: list[int] = list(node_ids)
        branch_of: dict[str, int] = {}
        dev_elems = [el for el in topo.circuit.elements if is_root and el.name in self.tree.root.devices]
        for el in list(a.inside) + dev_elems:
            if el.name in topo.branch:
                branch_of[el.name] = len(unknowns)
                local[topo.branch[el.name]] = len(unknowns)
                unknowns.append(-2 - topo.branch[el.name])
        chain_rows = []
        for _ in a.chains:
            chain_rows.append(len(unknowns))
            unknowns.append(-1)
        nz = len(unknowns)
        nu = len(topo.sources)
        ports = list(a.ports) + ([a.up] if not is_root else [])
        P = torch.zeros(nz, len(ports), dtype=DTYPE)
        for k, (n1, n2) in enumerate(ports):
            if n1 in local:
                P[local[n1], k] += 1.0
            if n2 in local:
                P[local[n2], k] -= 1.0
        X = torch.zeros(nz, nz, dtype=DTYPE)
        Bu = torch.zeros(nz, nu, dtype=DTYPE)
        channels = {el.name: ch for ch, el in enumerate(topo.sources) if el is not None}

        def inc(row: int, n1: int, n2: int) -> None:
            for n, c in ((n1, 1.0), (n2, -1.0)):
                if n in local:
                    X[local[n], row] += c
                    X[row, local[n]] += c

        # (row, column, coefficient, element) of the value stamps, added per call in element order: they
        # touch a branch's own row (E) or node x node entries (G), which no incidence stamp of another
        # element shares, so adding them after the incidence rows gives the same numbers
        gains: list = []
        for el in list(a.inside) + dev_elems:
            k = el.kind
            if el.name in branch_of:
                inc(branch_of[el.name], el.nodes[0], el.nodes[1])
            if k == "V":
                Bu[branch_of[el.name], channels[el.name]] = 1.0
            elif k == "E" and "VALUE" not in el.params:
                br = branch_of[el.name]
                for n, c in ((el.nodes[2], 1.0), (el.nodes[3], -1.0)):
                    if n in local:
                        gains.append((br, local[n], -c, el))
                    elif n != ref:  # pragma: no cover - control nodes are protected
                        raise NetlistError(f"{el.name}: control node outside its R-type adaptor", el.loc)
            elif k == "G" and "VALUE" not in el.params:
                for n, c in ((el.nodes[0], 1.0), (el.nodes[1], -1.0)):
                    for m_, d in ((el.nodes[2], 1.0), (el.nodes[3], -1.0)):
                        if n in local and m_ in local:
                            gains.append((local[n], local[m_], c * d, el))
            elif k == "I":
                for n, c in ((el.nodes[0], 1.0), (el.nodes[1], -1.0)):
                    if n in local:
                        Bu[local[n], channels[el.name]] = -c
        for row, chain, (n1, n2) in zip(chain_rows, a.chains, a.chain_nodes):  # type: ignore[attr-defined]
            inc(row, n1, n2)
            for leaf, s in chain:
                Bu[row, leaf.channel] += float(s)
        maps = None
        if is_root:
            m = topo.nonlinearity
            nv = torch.zeros(m.n_ports, nz, dtype=DTYPE)
            for j, row in enumerate(topo.ports):
                for i, c in row:
                    if i not in local:
                        raise NetlistError(f"{self._names(a)}: a device port refers to an unknown outside the "
                                           "root adaptor", None)
                    nv[j, local[i]] = c
            wi = torch.zeros(nz, m.n_outputs, dtype=DTYPE)
            wq = torch.zeros(nz, m.n_outputs, dtype=DTYPE)
            for o, (col, charge) in enumerate(topo.outputs):
                for i, c in col:
                    (wq if charge else wi)[local[i], o] = c
            maps = (nv, torch.cat([wq, -(wi + 2.0 * self.fs * wq)], dim=1))  # solved for Zq and Zf
        out = _RTypeStructure(unknowns, ports, P, X, Bu, gains, maps)
        self._structures[a.index] = out
        return out

    # ------------------------------------------------------------------ R-type by MNA
    def _rtype(self, a: Adaptor, rs: list[torch.Tensor], env: Mapping[str, torch.Tensor]) -> RTypeData:
        st = self._rtype_structure(a)
        topo = self.topo
        is_root = a.up is None
        unknowns, ports, P, Bu = st.unknowns, st.ports, st.P, st.Bu
        nu = Bu.shape[1]
        X = st.X
        if st.gains:
            X = X.clone()
            for i, j, c, el in st.gains:  # X[i, j] - c gain (E), + c d g (G), as stamp by stamp
                X[i, j] = X[i, j] + c * torch.as_tensor(self._ev(el.value, env), dtype=DTYPE)
        Rt = torch.stack(rs) if rs else torch.zeros(0, dtype=DTYPE)
        Gc = torch.reciprocal(Rt)
        Pc = P[:, : len(rs)]
        X0 = X + (Pc * Gc) @ Pc.T
        R_up = None
        if not is_root:
            pu = P[:, -1:]
            try:
                R_up = torch.linalg.solve(X0, pu)[:, 0] @ pu[:, 0]
            except RuntimeError:
                raise NetlistError(f"R-type adaptor over {self._names(a)}: singular internal network (a node "
                                   "connected only through the port facing the root)", None) from None
            Ginv = torch.cat([Gc, torch.reciprocal(R_up).reshape(1)])
            X = X0 + pu @ pu.T / R_up
            rhs = torch.cat([P * Ginv, Bu], dim=1)
            data_f = None
        else:
            X = X0
            data_f, device_cols = st.maps
            rhs = torch.cat([P * Gc, Bu, device_cols], dim=1)
        try:
            sol = torch.linalg.solve(X, rhs)
        except RuntimeError:
            raise NetlistError(f"R-type adaptor over {self._names(a)}: its internal MNA matrix is singular", None) \
                from None
        npt = len(ports)
        if is_root:  # no port faces a parent: no scattering; the device maps instead
            nf = topo.nonlinearity.n_outputs
            Zp, Zs, Zq, Zf = torch.split(sol, [npt, nu, nf, nf], dim=1)
            return RTypeData(None, None, Zp, Zs, R_up, Zq=Zq, Zf=Zf, Nv=data_f, Pt=P.T, unknowns=unknowns)
        # [S T] = 2 P' [Zp Zs] - [I 0] (eq. (3)): one product for both
        Zp, Zs = torch.split(sol, [npt, nu], dim=1)
        eye0 = torch.cat([torch.eye(npt, dtype=DTYPE), torch.zeros(npt, nu, dtype=DTYPE)], dim=1)
        S, T = torch.split((2.0 * P.T) @ sol - eye0, [npt, nu], dim=1)
        return RTypeData(S, T, Zp, Zs, R_up, unknowns=unknowns)

    def _names(self, a: Adaptor) -> str:
        names = [c.label() if isinstance(c, Leaf) else f"adaptor {c.index}" for c, _ in a.children]
        names += [el.name for el in a.inside]
        return ", ".join(names) or "no elements"


def _series(rs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.stack(rs)
    r_up = r.sum()
    return r_up, r / r_up


def _parallel(rs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.reciprocal(torch.stack(rs))
    g_up = g.sum()
    return torch.reciprocal(g_up), g / g_up


def port_pair_sign(row: tuple, p: int, q: int) -> float:
    """+1 if a port/output row is the pair (p, q), -1 if it is (q, p)."""
    return 1.0 if frozenset(row) == frozenset(_pair(p, q)) else -1.0


# ---------------------------------------------------------------------- propagation
Known = torch.Tensor | Callable[[], torch.Tensor]  # a branch voltage of Propagation.known


@dataclass
class Propagation:
    """Waves of one sample: reflected (``alpha``: leaves/adaptors towards the parent) and incident
    (``beta``), node voltages known from R-types, all as tensors of one trailing shape."""

    alpha: dict[int, torch.Tensor] = field(default_factory=dict)
    beta: dict[int, torch.Tensor] = field(default_factory=dict)
    # (n1, n2, v(n1)-v(n2)): a tensor, or a function of no arguments that forms it (node_voltage calls only
    # those on its path: the others record no operation)
    known: list[tuple[int, int, Known]] = field(default_factory=list)


def _stack(xs: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return torch.stack(xs) if xs else like.new_zeros((0, *like.shape))


def up_pass(tree: WDFTree, ad: Adapted, leaf_wave: Callable[[Leaf], torch.Tensor], src: torch.Tensor) -> Propagation:
    """Reflected waves from the leaves to the root.  ``src`` (Nu, *shape): the source values."""
    pr = Propagation()
    for lf in tree.leaves:
        pr.alpha[id(lf)] = leaf_wave(lf)
    for a in tree.adaptors:
        al = [_signed(pr.alpha[id(c)], s) for c, s in a.children]
        if a.kind == "series":
            pr.alpha[id(a)] = sum(al)
        elif a.kind == "parallel":
            cf = ad.coeff[id(a)]
            pr.alpha[id(a)] = sum(cf[k] * al[k] for k in range(len(al)))
        elif a.up is not None:
            d = ad.rtype[id(a)]
            m = len(a.children)
            pr.alpha[id(a)] = _contract(d.S[m, :m], _stack(al, src[0])) + _contract(d.T[m], src)
    return pr


def _contract(coef: torch.Tensor, waves: torch.Tensor) -> torch.Tensor:
    """``sum_k coef[..., k] waves[k]`` for waves (m, *shape)."""
    if waves.ndim <= 2:  # one matmul node under autograd (tensordot records view/permute/mm)
        return coef @ waves
    return torch.tensordot(coef, waves, dims=([coef.ndim - 1], [0]))


def _signed(t: torch.Tensor, s: int) -> torch.Tensor:
    """``s t`` for an orientation ``s = ±1``: no operation (no autograd node) where ``s = 1``."""
    return t if s > 0 else -t


def down_pass(tree: WDFTree, ad: Adapted, pr: Propagation, item, incident: Known,  # noqa: ANN001
              src: torch.Tensor) -> None:
    """Incident waves from an adaptor (whose own incident wave is ``incident``) down to the leaves.

    A resistor or a source has no state: its incident wave (a function of no arguments here, :func:`_lazy`)
    is formed only where :func:`node_voltage` reads its voltage."""
    if isinstance(item, Leaf):
        a_leaf = pr.alpha[id(item)]
        if callable(incident):
            pr.known.append((item.nodes[0], item.nodes[1], lambda: 0.5 * (a_leaf + incident())))
        else:
            pr.beta[id(item)] = incident
            pr.known.append((item.nodes[0], item.nodes[1], lambda: 0.5 * (a_leaf + incident)))
        return
    pr.beta[id(item)] = incident
    a: Adaptor = item
    al = [pr.alpha[id(c)] for c, _ in a.children]
    if a.kind == "series":
        loop = incident - pr.alpha[id(a)]
        cf = ad.coeff[id(a)]
        for k, (c, s) in enumerate(a.children):
            down_pass(tree, ad, pr, c, _lazy(c, lambda k=k, s=s: al[k] + _signed(cf[k], s) * loop), src)
    elif a.kind == "parallel":
        tot = incident + pr.alpha[id(a)]
        for k, (c, s) in enumerate(a.children):
            down_pass(tree, ad, pr, c, _lazy(c, lambda k=k, s=s: _signed(tot, s) - al[k]), src)
    else:
        d = ad.rtype[id(a)]
        m = len(a.children)
        waves = _stack([_signed(pr.alpha[id(c)], s) for c, s in a.children] + [incident], src[0])
        out = _contract(d.S[:m], waves) + _contract(d.T[:m], src)
        record_nodes(a, d, _once(lambda: _contract(d.Zp, waves) + _contract(d.Zs, src)), pr)
        for k, (c, s) in enumerate(a.children):
            down_pass(tree, ad, pr, c, _lazy(c, lambda k=k, s=s: _signed(out[k], s)), src)


def _lazy(child, wave: Callable[[], torch.Tensor]) -> Known:  # noqa: ANN001
    """The incident wave of ``child``: formed now for an adaptor or a capacitor or inductor (their waves are
    needed), left as ``wave`` for a resistor or a source (only its voltage may be read)."""
    return wave if isinstance(child, Leaf) and child.kind in ("R", "V") else wave()


def _once(build: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``build`` called at most once: its result is kept for later calls."""
    memo: list[torch.Tensor] = []

    def get() -> torch.Tensor:
        if not memo:
            memo.append(build())
        return memo[0]

    return get


def record_nodes(a: Adaptor, d: RTypeData, z: Known, pr: Propagation) -> None:
    """Node voltages of an R-type's unknowns ``z`` (or a function forming them) into ``pr.known``."""
    ref = GROUND if GROUND in a.nodes else a.nodes[0]
    zf = z if callable(z) else (lambda: z)
    for i, n in enumerate(d.unknowns):
        if n >= 0:
            pr.known.append((n, ref, lambda i=i: zf()[i]))


def node_voltage(known: list[tuple[int, int, Known]], node: int, like: torch.Tensor) -> torch.Tensor:
    """``v(node)`` from known branch voltages (a path to ground through them).

    The path is found on the node pairs alone (sweeps over ``known`` in order, as far as ``node``); only
    the voltages along it are then formed and summed from ground.
    """
    via: dict[int, tuple[int, int, float]] = {GROUND: (GROUND, -1, 0.0)}  # node -> (from, entry, sign)
    changed = True
    while node not in via and changed:
        changed = False
        for k, (n1, n2, _) in enumerate(known):
            if n1 in via and n2 not in via:
                via[n2] = (n1, k, -1.0)
                changed = True
            elif n2 in via and n1 not in via:
                via[n1] = (n2, k, 1.0)
                changed = True
    if node not in via:  # pragma: no cover - every node touches a leaf or an R-type
        raise NetlistError("the output node's voltage is not reachable through the WDF tree", None)
    path = []
    n = node
    while n != GROUND:
        path.append(via[n])
        n = via[n][0]
    pot = torch.zeros_like(like)
    for _, k, sign in reversed(path):
        v = known[k][2]
        v = v() if callable(v) else v
        pot = pot + v if sign > 0 else pot - v
    return pot


__all__ = ["Adapted", "Adapter", "Propagation", "RTypeData", "down_pass", "node_voltage", "up_pass"]
