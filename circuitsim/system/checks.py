"""Checks on the assembled MNA matrices: a degenerate circuit is a one-line NetlistError naming its elements.

The topology checks (circuitsim/circuit/checks.py) see the graph; these see the numbers, and
catch what a graph cannot: a value that makes a stamp infinite or NaN (a resistance of 1e-400,
a capacitance of ``{1/0}``), and matrices that are singular for *every* time step, so that no
formulation can solve them (docs/architecture.md: DK eliminates with ``M = G + 2/T Cm``, which
is also MNA's Newton matrix at ``f = 0``).  Singular for every step means singular at two
unrelated step sizes; the null vector of the (row- and column-equilibrated) matrix names the
unknowns involved, and through them the elements.

Which matrices must be invertible depends on the formulation (``MNATopology.inverts_companion``):

- DK and the formulations built on its state space eliminate with the companion matrix
  ``M = G + k Cm`` (``k = 2/T``) alone, so it is checked at two step sizes;
- MNA solves each step with Newton on ``G + k Cm + (Wi + k Wq) J Nv``, the devices' small-signal
  conductances and capacitances included (GMIN across every junction among them, as ngspice),
  so that matrix is checked instead, at the same two step sizes.  A node joined only through
  junctions (ROHM's BA4558R macromodel has four per op-amp) is refused by DK and solved by MNA,
  as ngspice solves it;
- every formulation solves the DC operating point on ``G + Wi J Nv``.

``J`` is a random stand-in for the device Jacobian with the pattern it has anywhere (a diode at
0 V can have a zero derivative without the circuit being degenerate).  A circuit no formulation
can solve (a floating node, a loop of voltage sources, a cut of capacitors and current sources)
is singular in every one of these matrices whatever the pattern, and is refused by all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from circuitsim.circuit.circuit import GROUND
from circuitsim.netlist import NetlistError
from circuitsim.netlist.expr import MATH_OPS, evaluate

if TYPE_CHECKING:
    from circuitsim.system.mna_system import MNAMatrices, MNATopology

#: 2/T for two unrelated step sizes (48 kHz and 8 x 44.1 kHz): singular at both = singular at every T
STEP_FACTORS = (2.0 * 48000.0, 2.0 * 352800.0 * 1.37)
#: a matrix whose equilibrated smallest singular value is below this fraction of its largest is singular
RANK_TOL = 1e-13


def check_finite(top: MNATopology, m: MNAMatrices) -> None:
    """Refuse matrices with an infinite or NaN entry, naming the element whose value made it."""
    mats = (m.G, m.Cm, m.Bu, m.sources)  # device parameters may be infinite (VAF=inf): only NaN is wrong there
    if all(bool(torch.isfinite(t).all()) for t in mats) and not bool(torch.isnan(m.theta).any()):
        return
    leaves = {k: p.value for k, p in top.circuit.params.items()}
    for el in top.circuit.elements:
        if el.value is None:
            continue
        try:
            v = float(evaluate(el.value, leaves, MATH_OPS, el.loc))
            bad = not np.isfinite(v) or (el.kind == "R" and (v == 0 or not np.isfinite(1.0 / v)))
        except (NetlistError, ZeroDivisionError, OverflowError):
            bad, v = True, float("nan")
        if bad:
            what = "a resistance of 0" if el.kind == "R" and v == 0 else f"the value {v:g}"
            raise NetlistError(f"{el.name}: {what} makes the circuit equations infinite or undefined", el.loc)
    raise NetlistError("a value of the circuit makes its equations infinite or undefined (NaN)", None)


def _singular(a: np.ndarray) -> np.ndarray | None:
    """The null vector of a square matrix that is singular after equilibration, else None."""
    if a.size == 0:
        return None
    r = np.abs(a).max(axis=1)
    a = a / np.where(r > 0, r, 1.0)[:, None]
    c = np.abs(a).max(axis=0)
    c = np.where(c > 0, c, 1.0)
    try:
        _, s, vt = np.linalg.svd(a / c[None, :])
    except np.linalg.LinAlgError:  # no verdict: let the solver report what it finds
        return None
    if s[-1] > RANK_TOL * s[0]:
        return None
    return vt[-1] / c


def _involved(top: MNATopology, vec: np.ndarray) -> tuple[list[str], list[str]]:
    """(unknown names, element names) where the null vector is large."""
    idx = [int(i) for i in np.flatnonzero(np.abs(vec) > 0.1 * np.abs(vec).max())]
    unknowns = [top.names[i] for i in idx]
    node_idx = {i for i in idx if i < len(top.circuit.nodes)}
    branch_names = {name for name, i in top.branch.items() if i in idx}
    elements = []
    for el in top.circuit.elements:
        if el.name in branch_names or any(n in node_idx for n in el.nodes if n != GROUND):
            elements.append(el.name)
    for name in top.names:
        if "#" in name and top.names.index(name) in idx:  # a device-internal node: its device
            dev = name[2:].split("#")[0].upper()
            if dev not in elements:
                elements.append(dev)
    return unknowns, elements


def _describe(top: MNATopology, vec: np.ndarray, what: str, cls: type[NetlistError] = NetlistError) -> NetlistError:
    unknowns, elements = _involved(top, vec)
    locs = [el.loc for el in top.circuit.elements if el.name in elements]
    shown = ", ".join(elements[:8]) + (" ..." if len(elements) > 8 else "")
    return cls(
        f"{what}: the equations of {', '.join(unknowns[:6])} cannot be solved (elements {shown}); "
        "look for a node joined only through nonlinear devices, a loop of voltage sources and inductors, "
        "a cut of current sources and capacitors, or values so far apart (1e-30 ohm next to 1 ohm) that "
        "double precision cannot tell them from one",
        locs[0] if len(locs) == 1 else None,
    )


def _jacobian_pattern(top: MNATopology, m: MNAMatrices) -> np.ndarray:
    """A stand-in for the device Jacobian: random magnitudes where the true one is nonzero anywhere.

    The pattern is taken at a few random port voltages (a diode or a Koren triode can have a
    zero derivative at one bias and not at another); an output that never depends on a port
    (a B source of V(e1) only) keeps its zeros, so a node it cannot hold stays singular.
    """
    n_ports = m.Nv.shape[0]
    n_out = m.Wi.shape[1]
    if n_ports == 0 or n_out == 0:
        return np.zeros((n_out, n_ports))
    rng = np.random.default_rng(12345)
    seen = np.zeros((n_out, n_ports), dtype=bool)
    with torch.no_grad():
        for _ in range(4):
            v = torch.as_tensor(rng.uniform(-0.4, 0.6, size=(1, n_ports)) * np.where(rng.random(n_ports) < 0.5, 1, 300))
            try:
                _, jf = top.nonlinearity.torch_eval(v, m.theta.detach(), jacobian=True)
            except (ArithmeticError, ValueError, RuntimeError):
                continue
            j = jf[0].numpy()
            seen |= np.isfinite(j) & (j != 0)
    return np.where(seen, rng.uniform(0.5, 2.0, size=seen.shape) * 1e-3, 0.0)


class CompanionSingularError(NetlistError):
    """``M = G + 2/T Cm`` is singular at every step: DK cannot eliminate, MNA (with the devices) may still solve."""


def check_companion(top: MNATopology, m: MNAMatrices) -> None:
    """Refuse ``M = G + 2/T Cm`` singular at every step, for a formulation that eliminates with it alone
    (``top.inverts_companion``); needs no device evaluation."""
    if not top.inverts_companion:
        return
    g, cm = m.G.detach().numpy(), m.Cm.detach().numpy()
    vecs = [_singular(g + k * cm) for k in STEP_FACTORS]
    if all(v is not None for v in vecs):
        raise _describe(top, vecs[0], "no time step can be solved (M = G + 2/T Cm is singular, and this "
                        "formulation eliminates with it alone; method 'mna' counts the devices' conductances too)",
                        CompanionSingularError)


def check_solvable(top: MNATopology, m: MNAMatrices) -> None:
    """Refuse circuits whose DC matrix, or (MNA) Newton matrix at a step, is singular at every time step."""
    g, cm = m.G.detach().numpy(), m.Cm.detach().numpy()
    wi, wq, nv = m.Wi.detach().numpy(), m.Wq.detach().numpy(), m.Nv.detach().numpy()
    jac = _jacobian_pattern(top, m)
    if not top.inverts_companion:  # MNA: its Newton matrix at a step, G + k Cm + (Wi + k Wq) J Nv
        vecs = [_singular(g + k * cm + (wi + k * wq) @ jac @ nv) for k in STEP_FACTORS]
        if all(v is not None for v in vecs):
            raise _describe(top, vecs[0], "no time step can be solved (G + 2/T Cm with the devices' "
                                          "conductances is singular)")
    vec = _singular(g + wi @ jac @ nv)
    if vec is not None:
        raise _describe(top, vec, "no DC operating point (the DC matrix is singular)")
