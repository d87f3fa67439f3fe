"""The circuit's equations in MNA row space, shared by every formulation.

Unknowns ``x`` are the node voltages (circuit nodes, then device-internal nodes) followed
by the branch currents of voltage-defining elements (V, L, E, B with ``V=``).  The
circuit obeys (Ho, Ruehli & Brennan 1975, with the device split of docs/devices.md)::

    G x + Wi f_i(Nv x) + d/dt (Cm x + Wq f_q(Nv x)) = Bu s(t)

``f = (f_i, f_q)`` are the nonlinear device outputs (currents and charges) of the port
voltages ``v = Nv x``, ``s(t)`` the independent source values (channel 0 is the audio
input).  :class:`MNATopology` holds the structure (computed once); :meth:`assemble`
turns parameter values into the matrices with torch, so gradients reach every value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import sympy
import torch

from circuitsim.circuit.circuit import GROUND, Circuit, FlatElement
from circuitsim.devices.family import DeviceFamily
from circuitsim.devices.registry import family_for_letter
from circuitsim.kernels.nonlinearity import DeviceBlock, ExprBlock, Nonlinearity, build_nonlinearity
from circuitsim.netlist import NetlistError
from circuitsim.netlist.ast import Binary, BranchI, Expr, Name, NodeV, Num
from circuitsim.netlist.expr import TORCH_OPS, children, evaluate, free_names, to_sympy
from circuitsim.system.checks import check_companion, check_finite, check_solvable

DTYPE = torch.float64
Row = tuple[tuple[int, float], ...]  # sparse row/column: (unknown index, coefficient)


def _pair(a: int, b: int) -> Row:
    if a == b:  # both ends on one node (a MOSFET's bulk tied to its source): V = 0 and an injection cancels
        return ()
    return tuple((i, c) for i, c in ((a, 1.0), (b, -1.0)) if i != GROUND)


@dataclass
class MNAMatrices:
    """Numeric MNA system for given parameter values (torch, differentiable)."""

    G: torch.Tensor  # (n, n) siemens / unitless rows of voltage-defining elements
    Cm: torch.Tensor  # (n, n) farads / henries
    Bu: torch.Tensor  # (n, n_sources) maps source values (volts, amperes) into rows
    Nv: torch.Tensor  # (n_ports, n) port-voltage incidence
    Wi: torch.Tensor  # (n, n_out) injection of device currents
    Wq: torch.Tensor  # (n, n_out) injection of device charges (d/dt)
    theta: torch.Tensor  # device parameter vector of the nonlinearity
    out: torch.Tensor  # (n,) output selector: y = out @ x
    sources: torch.Tensor  # (n_sources,) values at t = 0 of the non-input sources (channel 0 is 0)


@dataclass
class _Device:
    element: FlatElement
    family: DeviceFamily  # the registered family of the element letter
    internal: dict[str, int]  # terminal -> unknown index after the series resistors


@dataclass
class _StampPlan:
    """Where :meth:`MNATopology.assemble` puts each value (index tensors built once per topology)."""

    inv: list[Expr]  # expressions whose reciprocal is stamped (ohms -> siemens)
    plain: list[Expr | None]  # expressions stamped as they are (None: the constant 1)
    flat: torch.Tensor  # (entries,) index into the flattened (2, n, n) [G, Cm]: (matrix * n + row) * n + column
    value: torch.Tensor  # (entries,) index into [1 / inv values, plain values]
    coef: torch.Tensor  # (entries,) sign a_i b_j of the stamp (and -1 for L, E, H values)
    constants: tuple[torch.Tensor, ...]  # Bu, Nv, Wi, Wq, out (value-independent incidence)


class MNATopology:
    """Structure of a circuit's MNA equations: unknowns, stamps, ports, device outputs."""

    #: the formulation eliminates with M = G + 2/T Cm alone (DK), so the first assembly checks M (system/checks.py)
    inverts_companion: bool = True

    def __init__(self, circuit: Circuit, input_source: str | None = "VIN", output_node: str = "out"):
        self.circuit = circuit
        els = circuit.elements
        self.names: list[str] = [f"v({n})" for n in circuit.nodes]
        n = len(circuit.nodes)
        self.devices: list[_Device] = []
        self.resistors: list[tuple[str, Expr, Row]] = []  # (name, ohms expression, pair) incl. internal
        # device-internal nodes for series resistances (ngspice adds the same nodes), for every
        # element of a registered device family (circuitsim/devices/registry.py)
        for el in els:
            fam = family_for_letter(el.kind)
            if fam is None or el.model is None:
                continue
            outer = dict(zip(fam.terminals, el.nodes))
            internal = dict(outer)
            for term, pname in fam.series.items():
                expr = el.model.params.get(pname)
                if expr is None or self._float(expr) == 0.0:
                    continue
                self.names.append(f"v({el.name.lower()}#{term})")
                internal[term] = n
                # ngspice divides a series resistance by the area and the multiplier
                area = el.params.get("AREA", Num(1.0))
                ohms = Binary("/", expr, Binary("*", area, el.params.get("M", Num(1.0))))
                self.resistors.append((f"{el.name}.{pname}", ohms, _pair(outer[term], n)))
                n += 1
            card = {k: self._float(e) for k, e in el.model.params.items()}
            reason = fam.check(card, [t for t in fam.series if internal[t] != outer[t]])
            if reason is not None:
                raise NetlistError(f"{el.name}: {reason}", el.model.loc)
            # linear conductances the family adds (the BJT's substrate GMIN), scaled by M like its currents
            for extra in fam.extras(el.model.type, len(el.nodes)):
                a, b = (GROUND if t == "0" else internal[t] for t in (extra.plus, extra.minus))
                ohms = Binary("/", Num(extra.ohms), el.params.get("M", Num(1.0)))
                self.resistors.append((f"{el.name}.{extra.name}", ohms, _pair(a, b)))
            self.devices.append(_Device(el, fam, internal))
        self.n_nodes = n
        self.branch: dict[str, int] = {}
        for el in els:
            if el.kind in ("V", "L", "E", "H") or (el.kind == "B" and "V" in el.params):
                self.branch[el.name] = n
                self.names.append(f"i({el.name.lower()})")
                n += 1
        self.size = n
        for el in els:
            if el.kind in ("F", "H"):
                self._control_branch(el)  # a missing controlling source fails here, naming the element

        # independent sources: channel 0 is the audio input
        sources = [el for el in els if el.kind in ("V", "I")]
        self.input_source = None
        if input_source is not None:
            key = input_source.upper()
            match = [el for el in sources if el.name == key]
            if not match:
                vs = ", ".join(el.name for el in sources if el.kind == "V") or "none"
                raise NetlistError(f"input source {input_source} not found (voltage sources: {vs})", None)
            self.input_source = match[0]
            sources.remove(match[0])
        self.sources: list[FlatElement | None] = [self.input_source] + sources
        try:
            self.output = circuit.node_index(output_node)
        except KeyError as exc:
            raise NetlistError(f"output node '{output_node}': {exc.args[0]}", None) from None
        if self.output == GROUND:
            raise NetlistError("the output node is ground", None)

        self.ports: list[Row] = []
        self._port_index: dict[Row, int] = {}
        self.outputs: list[tuple[Row, bool]] = []  # (injection column, is_charge)
        self.blocks: list = []
        self.theta_size = 0
        self._junctions: set[int] = set()  # ports that are pn junctions (for Newton step limiting)
        self._theta_sources: list = []  # how to build each theta piece
        for dev in self.devices:
            self._device_block(dev)
        for el in els:
            if el.kind == "B" or (el.kind in ("E", "G") and "VALUE" in el.params):
                self._expr_block(el)
        self.nonlinearity: Nonlinearity = build_nonlinearity(self.blocks, len(self.ports), len(self.outputs))

    # ------------------------------------------------------------ helpers
    def junction_ports(self) -> set[int]:
        """Indices of the ports that are pn junctions of diodes and BJTs."""
        return set(self._junctions)

    def jacobian_entries(self) -> list[tuple[int, int]]:
        """The (output, port) pairs where the device Jacobian ``df/dv`` may be nonzero: each block's outputs
        against its own ports."""
        pairs: set[tuple[int, int]] = set()
        for blk in self.blocks:
            outs = blk.outs if isinstance(blk, DeviceBlock) else (blk.out,)
            ports = blk.ports if isinstance(blk, DeviceBlock) else tuple(p for _, p in blk.ports)
            pairs.update((o, p) for o in outs if o >= 0 for p in ports)
        return sorted(pairs)

    def jacobian(self, w: torch.Tensor, nv: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``(a, J) -> a + w J nv`` for a batch of device Jacobians ``J`` (batch, n_out, n_ports), without autograd.

        Assembled entry by entry: ``J`` is nonzero only at :meth:`jacobian_entries` and each column of
        ``w`` and row of ``nv`` joins at most two unknowns, so each entry adds at most four terms (dense
        products of these small matrices cost 10x more, and far more where torch's threads wait on a
        loaded machine).
        """
        n, n_ports = w.shape[0], nv.shape[0]
        to, src, coef = [], [], []
        for o, p in self.jacobian_entries():
            for i in torch.nonzero(w[:, o]).flatten().tolist():
                for j in torch.nonzero(nv[p]).flatten().tolist():
                    to.append(i * n + j)
                    src.append(o * n_ports + p)
                    coef.append(float(w[i, o] * nv[p, j]))
        to_t, src_t = torch.tensor(to, dtype=torch.long), torch.tensor(src, dtype=torch.long)
        coef_t = torch.tensor(coef, dtype=w.dtype)

        def add(a: torch.Tensor, jf: torch.Tensor) -> torch.Tensor:
            batch = jf.shape[0]
            jac = a.reshape(1, n * n).repeat(batch, 1)
            jac.index_add_(1, to_t, jf.reshape(batch, -1)[:, src_t] * coef_t)
            return jac.view(batch, n, n)

        return add

    def device_evaluator(self, theta: torch.Tensor) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``v -> (f, df/dv)`` at port voltages ``v`` (batch, n_ports) volts, from the compiled device code,
        without autograd (for Newton iterations; gradients come from an implicit step with torch_eval).

        Where the compiled code raises (a Newton step to 1e289 V overflows a junction exponential, where
        torch would give inf), ``f`` and ``J`` are NaN, which :func:`circuitsim.solvers.newton.newton`
        reports as not converged, so the caller falls back.
        """
        nl = self.nonlinearity
        if nl.n_outputs == 0 or nl.n_ports == 0:
            return lambda v: nl.torch_eval(v, theta.detach(), jacobian=True)
        theta_np = theta.detach().numpy()

        def evaluate(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            try:
                f, jf = nl.eval_batch(v.detach().numpy(), theta_np)
            except ArithmeticError:
                f = np.full((v.shape[0], nl.n_outputs), np.nan)
                jf = np.full((v.shape[0], nl.n_outputs, nl.n_ports), np.nan)
            return torch.from_numpy(f), torch.from_numpy(jf)

        return evaluate

    def _float(self, expr: Expr) -> float:
        leaves = {k: torch.tensor(p.value, dtype=DTYPE) for k, p in self.circuit.params.items()}
        return float(evaluate(expr, leaves, TORCH_OPS))

    def port(self, row: Row) -> int:
        """The index of the port ``v = row . x`` (rows are kept sorted by unknown, so equal rows share a port)."""
        row = tuple(sorted(row))
        if row not in self._port_index:
            self._port_index[row] = len(self.ports)
            self.ports.append(row)
        return self._port_index[row]

    def _add_output(self, column: Row, charge: bool) -> int:
        self.outputs.append((column, charge))
        return len(self.outputs) - 1

    def _device_block(self, dev: _Device) -> None:
        fam, t, given = dev.family, dev.internal, set(dev.element.model.params)
        rows = [_pair(t[a], t[b]) for a, b in fam.ports]
        sign = 1.0
        flipped = [tuple(sorted((i, -c) for i, c in row)) for row in rows]
        if len(rows) == 1 and tuple(sorted(rows[0])) not in self._port_index and flipped[0] in self._port_index:
            rows, sign = flipped, -1.0  # anti-parallel one-port devices share a port (one Newton unknown)
        ports = tuple(self.port(row) for row in rows)
        self._junctions.update(ports[spec.port] for spec in fam.limits)
        has_q = bool(given & fam.charge_params)  # charge outputs only where the card gives a charge
        outs = tuple(
            self._add_output(_pair(t[o.plus], t[o.minus]), o.charge) if has_q or not o.charge else -1
            for o in fam.outputs
        )
        size = len(fam.layout)
        self.blocks.append(DeviceBlock(fam.name, ports, outs, self.theta_size, sign, fam.features(given)))
        self._theta_sources.append(("device", dev, self.theta_size, size))
        self.theta_size += size

    def _device_params(self, dev: _Device, leaves: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Model parameters (ngspice defaults where the card is silent) scaled for the instance as ngspice does."""
        el, fam = dev.element, dev.family
        env = leaves if leaves is not None else self.leaf_values()
        cache = self.__dict__.setdefault("_default_tensors", {})
        hit = cache.get(id(fam.defaults))
        if hit is None or hit[0] is not fam.defaults:  # the defaults as tensors, made once (never written to)
            tensors = {k: torch.tensor(v, dtype=DTYPE) for k, v in fam.defaults.items()}
            hit = cache[id(fam.defaults)] = (fam.defaults, tensors)
        defaults = hit[1]
        p: dict[str, torch.Tensor] = {}
        for name in fam.defaults:
            expr = el.model.params.get(name)
            p[name] = evaluate(expr, env, TORCH_OPS) if expr is not None else defaults[name]
        inst = {k: evaluate(el.params[k], env, TORCH_OPS) for k in fam.scaling if k in el.params}
        return fam.instance_params(p, inst, el.model.type)

    def _expr_block(self, el: FlatElement) -> None:
        key = "V" if "V" in el.params else "I" if "I" in el.params else "VALUE"
        expr = el.params[key]
        symbols: dict = {}
        ports: list[tuple[sympy.Symbol, int]] = []
        params: list[tuple[sympy.Symbol, int]] = []

        def visit(e: Expr) -> None:
            if isinstance(e, NodeV):
                try:
                    a = self.circuit.node_index(e.pos) if e.pos != "0" else GROUND
                    b = GROUND if e.neg in (None, "0") else self.circuit.node_index(e.neg)
                except KeyError as exc:  # a node only the expression names (no element connects it)
                    raise NetlistError(f"{el.name}: V({e.pos}{'' if e.neg is None else ', ' + e.neg}) reads a node "
                                       "no element connects", el.loc) from exc
                if e not in symbols:
                    sym = sympy.Symbol(f"v{len(ports)}", real=True)
                    symbols[e] = sym
                    ports.append((sym, self.port(_pair(a, b))))
            elif isinstance(e, BranchI):
                if e.source not in self.branch:
                    raise NetlistError(f"{el.name}: I({e.source}) needs a voltage source named {e.source}", el.loc)
                if e not in symbols:
                    sym = sympy.Symbol(f"v{len(ports)}", real=True)
                    symbols[e] = sym
                    ports.append((sym, self.port(((self.branch[e.source], 1.0),))))
            elif isinstance(e, Name):
                if e.name in ("time", "temper", "hertz"):
                    raise NetlistError(f"{el.name}: '{e.name}' in a behavioural expression is not supported", el.loc)
            else:
                for child in children(e):
                    visit(child)

        visit(expr)
        for name in sorted(free_names(expr)):
            if name in self.circuit.params:
                sym = sympy.Symbol(f"p{self.theta_size}", real=True)
                symbols[name] = sym
                params.append((sym, self.theta_size))
                self._theta_sources.append(("leaf", name, self.theta_size, 1))
                self.theta_size += 1
        sexpr = to_sympy(expr, symbols)
        if key in ("V",) or (key == "VALUE" and el.kind == "E"):
            column: Row = ((self.branch[el.name], -1.0),)
        else:
            column = _pair(el.nodes[0], el.nodes[1])
        out = self._add_output(column, False)
        self.blocks.append(ExprBlock(expr=sexpr, ports=tuple(ports), params=tuple(params), out=out))

    # ------------------------------------------------------------ numbers
    def leaf_values(self) -> dict[str, torch.Tensor]:
        """The netlist's parameter values as float64 tensors (no grad)."""
        return {k: torch.tensor(p.value, dtype=DTYPE) for k, p in self.circuit.params.items()}

    def _stamp_plan(self) -> _StampPlan:
        """The assembly's structure, computed once per topology: which value goes where with which sign.

        Each stamp ``v a bᵀ`` of a value ``v`` (siemens, farads, henries or a gain) and incidence rows
        ``a``, ``b`` becomes entries ``(matrix, i, j, value index, a_i b_j)``, in the order the stamps are
        made (so the accumulated sums round exactly as stamp-by-stamp); the constant incidence matrices
        (``Bu``, ``Nv``, ``Wi``, ``Wq``, ``out``) are built here once.
        """
        plan = getattr(self, "_plan", None)
        if plan is not None:
            return plan
        n = self.size
        inv: list[Expr] = []  # values used as 1 / expression (resistances)
        plain: list[Expr | None] = []  # values used as the expression itself (None: the constant 1)
        entries: list[tuple[int, int, int, bool, int, float]] = []  # (matrix, i, j, inverse?, index, coefficient)

        def stamp(mat: int, rows: Row, cols: Row, expr: Expr | None, inverse: bool = False, sign: float = 1.0):
            group = inv if inverse else plain
            group.append(expr)
            for i, ci in rows:
                for j, cj in cols:
                    entries.append((mat, i, j, inverse, len(group) - 1, sign * (ci * cj)))

        for _, ohms, pair in self.resistors:
            stamp(0, pair, pair, ohms, inverse=True)
        for el in self.circuit.elements:
            k, nd = el.kind, el.nodes
            if k == "R":
                stamp(0, _pair(nd[0], nd[1]), _pair(nd[0], nd[1]), el.value, inverse=True)
            elif k == "C":
                stamp(1, _pair(nd[0], nd[1]), _pair(nd[0], nd[1]), el.value)
            elif k in ("L", "V", "E", "H") or (k == "B" and "V" in el.params):
                br = ((self.branch[el.name], 1.0),)
                stamp(0, _pair(nd[0], nd[1]), br, None)
                stamp(0, br, _pair(nd[0], nd[1]), None)
                if k == "L":
                    stamp(1, br, br, el.value, sign=-1.0)
                elif k == "E" and "VALUE" not in el.params:
                    stamp(0, br, _pair(nd[2], nd[3]), el.value, sign=-1.0)
                elif k == "H":  # v(out+) - v(out-) = r * i(Vcontrol)
                    stamp(0, br, self._control_branch(el), el.value, sign=-1.0)
            elif k == "F":  # gain * i(Vcontrol) flows from out+ through the source to out-
                stamp(0, _pair(nd[0], nd[1]), self._control_branch(el), el.value)
            elif k == "G" and "VALUE" not in el.params:
                stamp(0, _pair(nd[0], nd[1]), _pair(nd[2], nd[3]), el.value)

        bu = torch.zeros(n, len(self.sources), dtype=DTYPE)
        for ch, el in enumerate(self.sources):
            if el is None:
                continue
            if el.kind == "V":
                bu[self.branch[el.name], ch] = 1.0
            else:
                for i, c in _pair(el.nodes[0], el.nodes[1]):
                    bu[i, ch] = -c
        nv = torch.zeros(len(self.ports), n, dtype=DTYPE)
        for p, row in enumerate(self.ports):
            for i, c in row:
                nv[p, i] = c
        wi = torch.zeros(n, len(self.outputs), dtype=DTYPE)
        wq = torch.zeros(n, len(self.outputs), dtype=DTYPE)
        for o, (col, charge) in enumerate(self.outputs):
            for i, c in col:
                (wq if charge else wi)[i, o] = c
        out = torch.zeros(n, dtype=DTYPE)
        out[self.output] = 1.0
        # the value vector is [1 / inverse values..., plain values...]
        where = [idx if inverse else len(inv) + idx for _, _, _, inverse, idx, _ in entries]
        plan = _StampPlan(
            inv=inv,
            plain=plain,
            flat=torch.tensor([(e[0] * n + e[1]) * n + e[2] for e in entries], dtype=torch.long),
            value=torch.tensor(where, dtype=torch.long),
            coef=torch.tensor([e[5] for e in entries], dtype=DTYPE),
            constants=(bu, nv, wi, wq, out),
        )
        self._plan = plan
        return plan

    def assemble(self, leaves: Mapping[str, torch.Tensor]) -> MNAMatrices:
        """Matrices for the given parameter values (tensors keyed by leaf name).

        A few batched torch ops on the precomputed :meth:`_stamp_plan`: the element values are stacked
        into one vector, the resistances inverted in one division, and every stamp entry is put into
        ``[G, Cm]`` by one ``index_add`` (in entry order: the sums round as stamp by stamp).
        """
        n = self.size
        plan = self._stamp_plan()
        one = torch.tensor(1.0, dtype=DTYPE)
        ev = lambda e: one if e is None else torch.as_tensor(evaluate(e, leaves, TORCH_OPS), dtype=DTYPE)  # noqa: E731
        parts = []
        if plan.inv:
            parts.append(1.0 / torch.stack([ev(e) for e in plan.inv]))
        if plan.plain:
            parts.append(torch.stack([ev(e) for e in plan.plain]))
        gc = torch.zeros(2 * n * n, dtype=DTYPE)
        if parts:  # index_select / index_add: their backwards are each other, cheaper than index / index_put's
            values = parts[0] if len(parts) == 1 else torch.cat(parts)
            gc = gc.index_add(0, plan.flat, values.index_select(0, plan.value) * plan.coef)
        gc = gc.reshape(2, n, n)
        src_vals = [torch.tensor(0.0, dtype=DTYPE)]
        for el in self.sources[1:]:
            if el is not None:
                src_vals.append(self._source_value(el, leaves))
        pieces = []
        for kind, what, _, _ in self._theta_sources:
            if kind == "leaf":
                pieces.append(leaves[what].reshape(1).to(DTYPE))
            else:
                pieces.append(what.family.theta(self._device_params(what, leaves), what.element.model.type))
        theta = torch.cat(pieces) if pieces else torch.zeros(0, dtype=DTYPE)
        bu, nv, wi, wq, out = (t.clone() for t in plan.constants)  # fresh tensors: callers may write into them
        mats = MNAMatrices(gc[0], gc[1], bu, nv, wi, wq, theta, out, torch.stack(src_vals))
        check_finite(self, mats)  # a value that makes a stamp infinite or NaN: name the element
        if not getattr(self, "_companion_checked", False):  # DK's M singular at every step: once, no device code
            self._companion_checked = True
            check_companion(self, mats)
        if not getattr(self, "_solvable_checked", False):  # singular at every step: once, at the first assembly
            self._solvable_checked = True
            check_solvable(self, mats)
        return mats

    def implicit_step(
        self, m: MNAMatrices, x_star: torch.Tensor, a_mat: torch.Tensor, w_mat: torch.Tensor, rhs: torch.Tensor
    ) -> torch.Tensor:
        """One Newton step on ``a_mat x + w_mat f(Nv x) = rhs`` at its solution ``x_star``, with autograd.

        The value is ``x_star`` (to rounding) and its gradient is exactly the implicit-function
        gradient ``dx/dθ = -J⁻¹ ∂F/∂θ``, without differentiating through the iterations.
        """
        if not torch.is_grad_enabled() or not (
            a_mat.requires_grad or w_mat.requires_grad or rhs.requires_grad or m.theta.requires_grad
        ):
            return x_star
        f, jf = self.nonlinearity.torch_eval(x_star @ m.Nv.T, m.theta, jacobian=True)
        res = x_star @ a_mat.T + f @ w_mat.T - rhs
        jac = (a_mat + w_mat @ jf @ m.Nv).detach()
        return x_star - torch.linalg.solve(jac, res.unsqueeze(-1)).squeeze(-1)

    def _control_branch(self, el: FlatElement) -> Row:
        """The branch-current unknown an F or H source reads (its controlling voltage source)."""
        ctrl = el.params["CONTROL"]
        assert isinstance(ctrl, BranchI)
        if ctrl.source not in self.branch:
            raise NetlistError(
                f"{el.name}: controlling source {ctrl.source} is not a voltage source, inductor or E/H source "
                "of the circuit",
                el.loc,
            )
        return ((self.branch[ctrl.source], 1.0),)

    def _source_value(self, el: FlatElement, leaves: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """DC value (volts or amperes) of an independent source other than the input (0 if it has none).

        :meth:`check_waveforms` has already refused time-varying waveforms on these sources.
        """
        if el.source is not None and el.source.dc is not None:
            return torch.as_tensor(evaluate(el.source.dc, leaves, TORCH_OPS), dtype=DTYPE)
        return torch.tensor(0.0, dtype=DTYPE)

    def check_waveforms(self) -> None:
        """Refuse time-varying waveforms on sources other than the input (not simulated yet)."""
        for el in self.sources[1:]:
            if el is not None and el.source is not None and el.source.waveform is not None:
                raise NetlistError(
                    f"{el.name}: {el.source.waveform} waveform on a source other than the input is not "
                    "supported; drive the circuit through the input source",
                    el.loc,
                )


__all__ = ["MNAMatrices", "MNATopology"]
