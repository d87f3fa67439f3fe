"""DC operating point, as ngspice computes it before a transient (capacitors open, inductors shorted).

Plain damped Newton first; if it fails, gmin stepping (a conductance from every node to
ground, reduced decade by decade) and then source stepping (all sources ramped from 0),
the fallbacks of SPICE3 (Nagel 1975, ch. 5).  A circuit without device outputs is the linear
system ``G x = Bu s``: one solve (:func:`linear_point`), with Newton only where that solve fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from circuitsim.solvers.newton import ABSTOL, NewtonError, at_rounding_level, newton
from circuitsim.system.mna_system import MNAMatrices, MNATopology

JUNCTION_STEP = 0.5  # volts: largest change of a junction voltage in one Newton step
# continuation steps before source stepping gives up (ngspice gives up after its `srcsteps`); a
# circuit that needs more has no operating point this homotopy can reach in reasonable time
SOURCE_STEPS = 200


@dataclass
class OperatingPointInfo:
    """How the operating point was found."""

    iterations: int = 0
    method: str = "newton"  # 'newton', 'gmin stepping', 'source stepping'
    residual: float = 0.0
    steps: list[str] = field(default_factory=list)


def junction_limiter(topology: MNATopology, nv: torch.Tensor):
    """A Newton step limiter that shortens steps moving any junction port by more than JUNCTION_STEP."""
    ports = sorted(topology.junction_ports())
    if not ports:
        return None
    sel = nv[ports]

    def limit(x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        dv = (dx @ sel.T).abs().amax(dim=-1, keepdim=True)
        return dx * torch.clamp(JUNCTION_STEP / dv.clamp_min(1e-300), max=1.0)

    return limit


def linear_point(
    topology: MNATopology, m: MNAMatrices, sources: torch.Tensor, info: OperatingPointInfo | None = None
) -> torch.Tensor | None:
    """``x = G⁻¹ Bu s`` (batch, n) for sources ``s`` (batch, n_sources), where ``G x = Bu s`` is the whole
    DC system (no device outputs); ``None`` for a circuit with devices.

    One LU solve, differentiable where grad is on: autograd's solve backward is the implicit-function
    gradient ``dx/dθ = -G⁻¹ (∂G/∂θ x - ∂(Bu s)/∂θ)`` that :meth:`MNATopology.implicit_step` forms.  Also
    ``None`` where ``G`` is singular or the answer does not satisfy the equations to rounding (Newton's
    own acceptance test, :func:`circuitsim.solvers.newton.at_rounding_level`): then the caller's Newton,
    with its gmin stepping, decides.  ``info`` (when given) records one iteration and the residual.
    """
    if topology.nonlinearity.n_outputs:
        return None
    b = sources @ m.Bu.T
    try:
        x = torch.linalg.solve(m.G, b.T).T  # one factorisation for the whole batch
    except torch.linalg.LinAlgError:
        return None
    with torch.no_grad():
        r = x @ m.G.T - b
        jac = m.G.detach().expand(x.shape[0], -1, -1)
        if not bool(torch.isfinite(r).all()) or not at_rounding_level(r, jac, x, ABSTOL):
            return None
    if info is not None:
        info.iterations, info.residual = 1, float(r.abs().max()) if r.numel() else 0.0
    return x


def operating_point(
    topology: MNATopology, m: MNAMatrices, sources: torch.Tensor, x0: torch.Tensor | None = None
) -> tuple[torch.Tensor, OperatingPointInfo]:
    """Solve ``G x + Wi f_i(Nv x) = Bu s`` for a batch of source vectors ``s`` (batch, n_sources).

    Returns the unknowns (batch, n): node voltages in volts, branch currents in amperes.
    Runs without autograd; formulations attach the implicit-function gradient themselves.
    """
    batch = sources.shape[0]
    n = topology.size
    info = OperatingPointInfo()
    with torch.no_grad():
        x = linear_point(topology, m, sources, info)
    if x is not None:
        return x, info
    limit = junction_limiter(topology, m.Nv)
    node_rows = torch.zeros(n, dtype=m.G.dtype)
    node_rows[: topology.n_nodes] = 1.0
    device_eval = topology.device_evaluator(m.theta)
    jacobian = topology.jacobian(m.Wi.detach(), m.Nv.detach())
    g, wi, nv, bu = (t.detach() for t in (m.G, m.Wi, m.Nv, m.Bu))

    def make(scale: float, gmin: float):
        b = scale * sources.detach() @ bu.T
        a = g + torch.diag(gmin * node_rows)

        def fn(x):
            f, jf = device_eval(x @ nv.T)
            return x @ a.T + f @ wi.T - b, jacobian(a, jf)

        return fn

    with torch.no_grad():
        x = torch.zeros(batch, n, dtype=m.G.dtype) if x0 is None else x0.clone()
        r = newton(make(1.0, 0.0), x, limit=limit, max_iter=200)
        info.iterations += r.iterations
        # newton() accepts only an answer at which the equations hold to rounding: from zero the AD8051
        # macromodel's Newton runs off to a state with a branch current of 1e80 A whose step looks small
        # beside it; it is refused, and gmin stepping finds ngspice's point
        if r.converged:
            info.residual = r.residual
            return r.x, info
        info.steps.append(f"newton failed after {r.iterations} iterations (residual {r.residual:.3g})")
        # gmin stepping
        x = torch.zeros(batch, n, dtype=m.G.dtype)
        ok = True
        for gmin in [10.0**-k for k in range(2, 13)] + [0.0]:
            r = newton(make(1.0, gmin), x, limit=limit, max_iter=200)
            info.iterations += r.iterations
            if not r.converged:
                ok = False
                break
            x = r.x
        if ok:
            info.method, info.residual = "gmin stepping", r.residual
            return x, info
        info.steps.append(f"gmin stepping failed at gmin={gmin:g}")
        # source stepping
        x = torch.zeros(batch, n, dtype=m.G.dtype)
        scale, step = 0.0, 0.1
        for _ in range(SOURCE_STEPS):
            if scale >= 1.0:
                break
            trial = min(1.0, scale + step)
            r = newton(make(trial, 0.0), x, limit=limit, max_iter=100)
            info.iterations += r.iterations
            if r.converged:
                x, scale = r.x, trial
                step = min(step * 2, 0.5)
            else:
                step /= 4
                if step < 1e-6:
                    break
        if scale < 1.0:
            info.steps.append(f"source stepping stalled at {scale:.3g} of the sources")
            raise NewtonError("DC operating point: " + "; ".join(info.steps))
        info.method, info.residual = "source stepping", r.residual
        return x, info
