"""Junction charges as nonlinear port-Hamiltonian storage (docs/phs.md, "Nonlinear storage").

Each charge output ``q_k`` of a device (BJT ``qbe``/``qbc``, diode ``q``) is a storage branch on its
own junction.  Its **storage law** ``S_k(v)`` is the part of the device's charge that is a function of
the junction's own voltage: the depletion charge with ngspice's FC linearisation
(:func:`circuitsim.devices.junction.depletion`) plus the transit time times the ideal junction
current (:func:`circuitsim.devices.junction.pn`; ``TF·cbe``, ``TR·cbc``, ``TT·(id + GMIN v)``).  It is
monotone, so ``q = S(v)`` is invertible and the energy is the Legendre transform of the co-energy
``Φ(v) = ∫ S dv`` (Falaize & Hélie 2016, §2.3, eq. 4):

    H(q) = ∫ v dq = E(v) := v S(v) - Φ(v),       ∇H(q) = v.

The discrete gradient of the step (F&H eq. 25) in the junction voltages ``w`` at the step's ends:

    ē(w⁻, w) = (E(w) - E(w⁻)) / (S(w) - S(w⁻))
             ≈ m + Δ² S''(m) / (12 S'(m)),   m = (w⁻ + w)/2, Δ = w - w⁻, when |Δ| < DELTA_GUARD.

The Taylor form is the expansion of the weighted mean ``∫ v S' dv / ∫ S' dv`` over ``[w⁻, w]``; its
error is ``≤ (Δ/2)⁴ / (45 (N Vt)³)`` for an exponential law (``≤ 1.3e-13 V`` at ``|Δ| = 2e-4 V``, N = 1),
and the quotient's rounding error is ``≈ ε |E| / (S' |Δ|)`` (``≈ 2e-13 V`` there for the 2N3904's
junctions), so the guard costs nothing the quotient would have kept.

What the device's charge has beyond ``S_k`` -- the Gummel-Poon base-charge and XTF modulation of the
transit charge, ``TF·cbe·((1 + argtf)/qb - 1)``, which depends on ``vbc`` too, or a diode's
high-injection / breakdown terms times TT -- is not the gradient of any energy (the Gummel-Poon
charges are not reciprocal, ``∂qbe/∂vbc ≠ ∂qbc/∂vbe``).  It is a **modulated charge port** on the same
junction: its flow ``Δ(q - S(v))/T`` is part of the branch's exact charge flow, and its power
``-ē Δ(q - S)/T`` is booked with the ports, never with the storage or the dissipation.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
import torch
from sympy import Abs, Max, Min, Piecewise

from circuitsim.devices.junction import E as NAPIER
from circuitsim.devices.junction import depletion, pn
from circuitsim.devices.program import Program, limexp, pow1m
from circuitsim.devices.registry import family
from circuitsim.kernels.nonlinearity import DeviceBlock, ExprBlock, Nonlinearity, build_nonlinearity
from circuitsim.netlist import NetlistError
from circuitsim.system.mna_system import DTYPE, MNATopology, _pair

DELTA_GUARD = 2.5e-6  # volts: below this step of the junction voltage the discrete gradient is the midpoint

V = sympy.Symbol("v", real=True)


@dataclass(frozen=True)
class Law:
    """A storage law in the device frame: ``S(v)`` (coulombs), ``Φ(v) = ∫ S dv`` (coulomb-volts), over theta slots."""

    S: sympy.Expr
    Phi: sympy.Expr
    params: tuple[tuple[sympy.Symbol, int], ...]  # symbol -> slot of the device's theta piece
    modulated: bool  # the device's charge has a part that is not S (a modulated charge port)


def _regions(expr: sympy.Expr) -> list[tuple[sympy.Expr, sympy.Basic]]:
    return list(expr.args) if isinstance(expr, Piecewise) else [(expr, sympy.true)]


def _statement(build) -> sympy.Expr:  # noqa: ANN001
    """The expression a junction helper writes as its one statement (the device functions, reused)."""
    b = Program("storage")
    sym = build(b)
    return dict(b.stmts)[sym]


def _depletion(c0, vj, m, fcv, f1, f2, f3) -> tuple[sympy.Expr, sympy.Expr]:  # noqa: ANN001
    """Depletion charge (junction.depletion) and its antiderivative, continuous at ``fcv``."""
    q = _statement(lambda b: depletion(b, "q", V, c0, vj, m, fcv, f1, f2, f3))
    (below, _), (above, _) = _regions(q)
    amin = 1 - fcv / vj  # below fcv the base 1 - v/VJ exceeds 1 - FC: Max keeps the unused torch branch finite
    below = below.replace(pow1m, lambda a, mm: pow1m(Max(a, amin), mm))
    a = Max(1 - V / vj, amin)
    # ∫ VJ C0 (1 - a^(1-M))/(1-M) dv = VJ C0/(1-M) (v + VJ a^(2-M)/(2-M)),  a^(2-M) = a · pow1m(a, M)
    phi_b = vj * c0 / (1 - m) * (V + vj * a * pow1m(a, m) / (2 - m))
    phi_a = c0 * f1 * V + c0 / f2 * (f3 * (V - fcv) ** 2 / 2 + m / (2 * vj) * (V**3 / 3 - fcv**2 * V))
    phi_a = phi_a + (phi_b - phi_a).subs(V, fcv)  # continuity at fcv
    return Piecewise((below, V < fcv), (above, True)), Piecewise((phi_b, V < fcv), (phi_a, True))


def _pn(isat, vte) -> tuple[sympy.Expr, sympy.Expr]:  # noqa: ANN001
    """Junction current without breakdown (junction.pn, exp instead of its overflow guard) and its antiderivative."""
    i = _statement(lambda b: pn(b, "i", V, isat, vte)).replace(limexp, sympy.exp)
    (hi, c_hi), (lo, _) = _regions(i)
    v0 = -3 * vte
    lo = lo.subs(V, Min(V, v0))  # the unused torch branch stays finite at v = 0
    phi_hi = isat * (vte * sympy.exp(V / vte) - V)
    vs = Min(V, v0)
    # ∫ -IS (1 + 27 vte³/(e³ v³)) dv = -IS v + IS 27 vte³ / (2 e³ v²)
    phi_lo = -isat * V + isat * 27 * vte**3 / (2 * NAPIER**3 * vs**2)
    phi_lo = phi_lo + (phi_hi - phi_lo).subs(V, v0)  # continuity at -3 vte
    return Piecewise((hi, c_hi), (lo, True)), Piecewise((phi_hi, c_hi), (phi_lo, True))


# per family and charge output: depletion slots, (transit time, IS, N Vt) slots of the ideal current,
# whether a GMIN v term joins the current, and the features that make the device's charge differ from S
_TABLE: dict[str, dict[str, tuple]] = {
    "bjt": {
        "qbe": (("CJE", ("CJE", "VJE", "MJE_EFF", "FCPE", "F1", "F2", "F3")),
                ("TF", ("TF", "ISBE", "VTF_N")), None, {"TF"}),
        "qbc": (("CJC", ("CZBC", "VJC", "MJC_EFF", "FCPC", "F5", "F6", "F7")),
                ("TR", ("TR", "ISBC", "VTR_N")), None, set()),
    },
    "diode": {
        "q": (("CJO", ("CJO", "VJ_EFF", "M_EFF", "DEPCAP", "F1", "F2", "F3")),
              ("TT", ("TT", "IS_EFF", "VTE")), "GMIN", {"BV", "ISR", "IKF", "IKR"}),
    },
}


def storage_law(family, output: str, features: frozenset[str]) -> Law | str:  # noqa: ANN001
    """The storage law of a device family's charge output, or why it has none (a one-line reason)."""
    spec = _TABLE.get(family.name, {}).get(output)
    if spec is None:
        return f"the {family.name} charge {output} is not modelled as port-Hamiltonian storage"
    dep, transit, gmin, extra = spec
    syms: dict[str, sympy.Symbol] = {}

    def p(name: str) -> sympy.Symbol:
        return syms.setdefault(name, sympy.Symbol(f"p_{name}", real=True))

    s, phi = sympy.S.Zero, sympy.S.Zero
    if dep[0] in features:
        a, b = _depletion(*(p(k) for k in dep[1]))
        s, phi = s + a, phi + b
    modulated = False
    if transit[0] in features:
        tt, isat, vte = (p(k) for k in transit[1])
        a, b = _pn(isat, vte)
        if gmin is not None:
            a, b = a + p(gmin) * V, b + p(gmin) * V**2 / 2
        s, phi = s + tt * a, phi + tt * b
        modulated = bool(extra & features)
    if s == 0:
        return f"its {output} is identically zero with this card (give the junction's charge parameters)"
    params = tuple((sym, family.layout.index(name)) for name, sym in syms.items())
    return Law(s, phi, params, modulated)


def energy(law: Law, v: sympy.Expr) -> sympy.Expr:
    """``E(v) = v S(v) - Φ(v)`` (joules): ``H(q)`` at ``q = S(v)`` (up to a constant)."""
    return (v * law.S - law.Phi).subs(V, v)


def discrete_gradient(law: Law, wp: sympy.Expr, w: sympy.Expr) -> sympy.Expr:
    """``(E(w) - E(wp)) / (S(w) - S(wp))`` (volts), the midpoint below ``DELTA_GUARD`` (module docstring)."""
    d = w - wp
    # the denominator gains 1 C where the quotient is not used, so that torch (which evaluates both branches)
    # stays finite at Δ = 0
    unused = Piecewise((0, Abs(d) >= DELTA_GUARD), (1, True))
    direct = (energy(law, w) - energy(law, wp)) / (law.S.subs(V, w) - law.S.subs(V, wp) + unused)
    return Piecewise(((w + wp) / 2, Abs(d) < DELTA_GUARD), (direct, True))


RHO0 = 0.4  # gain of the alternation damping (docs/phs.md, "Alternation damping")
EPS_DAMP = 1e-6  # volts: increments below this leave the damping at ~0 (the law stays smooth at Newton precision)
HISTORY = 3  # previous values of a damped storage coordinate that the step reads


def alternation(d, dp):  # noqa: ANN001, ANN201
    """``r_k = δ_k² / (δ_k² + Δ_k² + Δ_{k-1}² + ε²)`` of two consecutive increments ``Δ_k = d``, ``Δ_{k-1} = dp``
    (``δ_k = d - dp``; volts, sympy, torch or float): 2/3 on a Nyquist-rate alternation, ``O(T²)`` on a smooth
    trajectory."""
    dd = d - dp
    return dd**2 / (dd**2 + d**2 + dp**2 + EPS_DAMP**2)


def damping(w, wp, wpp, wppp):  # noqa: ANN001, ANN201
    """``ρ ≥ 0`` of the damped discrete gradient from a storage coordinate's values at ``t_n .. t_{n-3}``
    (docs/phs.md, "Alternation damping"; sympy or torch values, volts).

    ``ρ = RHO0 r_n r_{n-1}`` (:func:`alternation`) needs the alternation in two consecutive steps, so a single kink
    of the trajectory (a diode switching) is left to the plain discrete gradient.
    """
    return RHO0 * alternation(w - wp, wp - wpp) * alternation(wp - wpp, wpp - wppp)


def step_block(law: Law, sign: float, ports: tuple[int, ...], out: int, theta: int) -> ExprBlock:
    """``f[out] = w - 2 (ē(w⁻, w) + ρ (w - w⁻))`` in the circuit frame (``sign`` = the device polarity, ±1);
    ``ports`` = the step's ports of ``w, w⁻, w⁻⁻, w⁻⁻⁻``."""
    a, b, c, e = (sympy.Symbol(n, real=True) for n in ("w", "wp", "wpp", "wppp"))
    expr = a - 2 * (sign * discrete_gradient(law, sign * b, sign * a) + damping(a, b, c, e) * (a - b))
    return ExprBlock(expr, tuple(zip((a, b, c, e), ports)), tuple((s, theta + k) for s, k in law.params), out)


def damped_block(ports: tuple[int, ...], out: int) -> ExprBlock:
    """``f[out] = -2 ρ (s - s⁻)`` (volts): a damped capacitor's end value ``s = 2 v̄ - s⁻ + f[out]``;
    ``ports`` = the step's ports of ``s, s⁻, s⁻⁻, s⁻⁻⁻``."""
    a, b, c, e = (sympy.Symbol(n, real=True) for n in ("s", "sp", "spp", "sppp"))
    return ExprBlock(-2 * damping(a, b, c, e) * (a - b), tuple(zip((a, b, c, e), ports)), (), out)


def energy_blocks(law: Law, sign: float, w: int, out_e: int, out_s: int, theta: int) -> tuple[ExprBlock, ExprBlock]:
    """``E(w)`` (joules) and ``S(w)`` (coulombs) in the circuit frame, for the energy report."""
    a = sympy.Symbol("w", real=True)
    params = tuple((s, theta + k) for s, k in law.params)
    return (ExprBlock(energy(law, sign * a), ((a, w),), params, out_e),
            ExprBlock(sign * law.S.subs(V, sign * a), ((a, w),), params, out_s))


@dataclass
class Charges:
    """The junction charges of a circuit as storage, and the nonlinearities of the step that carries them.

    ``step_nl`` reads the ports ``[v̄ (np), w, w⁻, w⁻⁻, w⁻⁻⁻ (nq each), s, s⁻, s⁻⁻, s⁻⁻⁻ (nd each)]`` -- the
    device ports at the step, the junction voltages of the charges at the step's end, its start and the two
    sample instants before, then the same four values of the damped capacitors' voltages (deviations from the
    DC point)
    -- and writes ``[f (nf), fw (nw), g (nq), h (nd)]``: the circuit's device currents at ``v̄`` (charge outputs
    unused, 0), every output of each charged device at its end voltages ``w`` (currents and charges),
    ``g = w - 2 (ē(w⁻, w) + ρ (w - w⁻))`` and ``h = -2 ρ (s - s⁻)`` (docs/phs.md, "Alternation damping").
    ``energy_nl`` reads ``w`` and writes ``[E(w) (nq), S(w) (nq)]``.  With damped capacitors and no junction
    charge, ``nq = 0``.
    """

    names: list[str]
    rows: torch.Tensor  # (nq, n) branch voltage of each charge (volts = rows @ x)
    outs: list[int]  # the topology's output index of each charge
    ports: list[int]  # the topology's port index of each charge's junction
    q_index: list[int]  # index of each charge's Q(w) in the step nonlinearity's outputs
    f_at_w: dict[int, int]  # topology current output of a charged device -> its value at w in the step outputs
    modulated: list[bool]  # the device's charge has a modulated part (a port) beyond the storage law
    step_nl: Nonlinearity
    energy_nl: Nonlinearity | None
    n_damped: int = 0  # damped linear capacitors (Storage.damped)

    @property
    def size(self) -> int:
        return len(self.names)

    def free_ports(self) -> tuple[int, ...]:
        """The step nonlinearity's ports that Newton solves: ``v̄``, ``w`` and ``s`` at the step's end (the
        earlier values are state reads)."""
        np_ = self.step_nl.n_ports - (HISTORY + 1) * (self.size + self.n_damped)
        base = np_ + (HISTORY + 1) * self.size
        return (*range(np_ + self.size), *range(base, base + self.n_damped))

    def step_ports(self, v: torch.Tensor, w: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
        """The step nonlinearity's ports at rest: device ports ``v``, junction voltages ``w`` and damped
        capacitor deviations ``sd`` equal at every instant (..., np + 4 nq + 4 nd)."""
        return torch.cat([v] + [w] * (HISTORY + 1) + [sd] * (HISTORY + 1), dim=-1)


_BUILT: dict[tuple, Nonlinearity] = {}


def _build(blocks: tuple, n_ports: int, n_outputs: int) -> Nonlinearity:
    """build_nonlinearity, once per process for equal blocks (sympy's derivatives of the laws take seconds)."""
    key = (blocks, n_ports, n_outputs)
    if key not in _BUILT:
        _BUILT[key] = build_nonlinearity(blocks, n_ports, n_outputs)
    return _BUILT[key]


def charges_of(topo: MNATopology, n_damped: int = 0) -> Charges | None:
    """The charge storage of ``topo`` and the step nonlinearity with ``n_damped`` damped capacitors (None
    without either); NetlistError for a charge it cannot model."""
    np_, nf = len(topo.ports), len(topo.outputs)
    dev_blocks = [b for b in topo.blocks if isinstance(b, DeviceBlock)]
    charged = []
    for dev, blk in zip(topo.devices, dev_blocks):
        if not any(o.charge and k >= 0 for o, k in zip(dev.family.outputs, blk.outs)):
            continue
        feats = blk.features if blk.features is not None else dev.family.all_features
        laws = {}
        for o, k in zip(dev.family.outputs, blk.outs):
            if not o.charge:
                continue
            law = storage_law(dev.family, o.name, feats)
            if isinstance(law, str):
                raise NetlistError(f"{dev.element.name}: {law} (use --method dk)", dev.element.loc)
            j = next((j for j, pr in enumerate(dev.family.ports) if pr == (o.plus, o.minus)), None)
            if j is None:
                raise NetlistError(f"{dev.element.name}: the charge {o.name} is not on a port of the device, not "
                                   "modelled as port-Hamiltonian storage (use --method dk)", dev.element.loc)
            laws[j] = (o, k, law)
        if len(laws) != len(dev.family.ports):
            raise NetlistError(f"{dev.element.name}: junction charges on some of its junctions only are not modelled "
                               "as port-Hamiltonian storage (use --method dk)", dev.element.loc)
        charged.append((dev, blk, laws))
    if not charged and not n_damped:
        return None
    nq = sum(len(laws) for _, _, laws in charged)
    step_blocks: list = []
    for blk in topo.blocks:  # currents at the step's ports; the charges move to the end voltages
        if isinstance(blk, DeviceBlock):
            charge = [o.charge for o in family(blk.family).outputs]
            blk = DeviceBlock(blk.family, blk.ports, tuple(-1 if q else k for q, k in zip(charge, blk.outs)),
                              blk.theta, blk.sign, blk.features)
        step_blocks.append(blk)
    names, rows, outs, ports, q_index, modulated = [], [], [], [], [], []
    f_at_w: dict[int, int] = {}
    energy_blocks_: list = []
    laws_in_order: list = []
    at, k = nf, 0
    for dev, blk, laws in charged:
        w_ports = []
        for j in range(len(dev.family.ports)):
            o, out, law = laws[j]
            names.append(f"{dev.element.name}.{o.name}")
            row = torch.zeros(topo.size, dtype=DTYPE)
            for i, c in _pair(dev.internal[o.plus], dev.internal[o.minus]):
                row[i] = c
            rows.append(row)
            outs.append(out)
            ports.append(blk.ports[j])
            modulated.append(law.modulated)
            w_ports.append(np_ + k)
            laws_in_order.append((law, dev.family.sign(dev.element.model.type), blk.theta))
            k += 1
        w_outs = tuple(at + i for i in range(len(blk.outs)))
        for (o, orig), wo in zip(zip(dev.family.outputs, blk.outs), w_outs):
            if o.charge:
                q_index.append(wo)
            elif orig >= 0:
                f_at_w[orig] = wo
        step_blocks.append(DeviceBlock(blk.family, tuple(w_ports), w_outs, blk.theta, 1.0, blk.features))
        at += len(blk.outs)
    hist = range(HISTORY + 1)
    for i, (law, sign, theta) in enumerate(laws_in_order):
        step_blocks.append(step_block(law, sign, tuple(np_ + j * nq + i for j in hist), at + i, theta))
        energy_blocks_.extend(energy_blocks(law, sign, i, i, nq + i, theta))
    nd, base = n_damped, np_ + (HISTORY + 1) * nq
    for i in range(nd):
        step_blocks.append(damped_block(tuple(base + j * nd + i for j in hist), at + nq + i))
    # the expression blocks (discrete gradients, damping, behavioural sources) before the device blocks: each block
    # writes its own outputs, so the order changes no value, but the generated nl_eval of the diode clipper's step
    # then takes 39-41 ns a call instead of 59-60 (benchmarks/bench_phs.py --breakdown; docs/phs.md, "Speed")
    step_blocks.sort(key=lambda b: not isinstance(b, ExprBlock))
    step_nl = _build(tuple(step_blocks), base + (HISTORY + 1) * nd, at + nq + nd)
    energy_nl = _build(tuple(energy_blocks_), nq, 2 * nq) if nq else None
    rows_t = torch.stack(rows) if rows else torch.zeros(0, topo.size, dtype=DTYPE)
    return Charges(names, rows_t, outs, ports, q_index, f_at_w, modulated, step_nl, energy_nl, nd)


__all__ = ["DELTA_GUARD", "HISTORY", "RHO0", "Charges", "Law", "alternation", "charges_of", "damped_block", "damping",
           "discrete_gradient", "energy", "energy_blocks", "step_block", "storage_law"]
