"""Plain-torch reference of the core's one-step recursion (the gradient oracle for the kernels).

Same recursion as :mod:`circuitsim.kernels.core`, one Python-level step per sample, for any
formulation given as a torch function ``residual(P, p, z, theta) -> (phi, g, M)`` (batched over
the leading dimension: ``phi = phi(z)``, ``g = p + r(z)``, ``M = -dg/dz``).  Each sample's Newton
solve runs to convergence without autograd; then one more Newton step with autograd on, from
the converged point ``z*`` and with the Newton matrix detached::

    z = z* + M^-1 g(z*),   M = -dg/dz(z*) (detached)

which leaves the value unchanged (the residual is ~0) and attaches exactly the
implicit-function gradient ``dz = M^-1 (dp + dr)``.  Slow (tens of microseconds per sample)
and memory hungry: for short test signals only.  :func:`reference_state_space` is the DK
recursion (``g = p + K f(v) - v``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from circuitsim.kernels.nonlinearity import Nonlinearity

Residual = Callable[
    [Sequence[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]
]


def _newton(residual: Residual, P: Sequence[torch.Tensor], p: torch.Tensor, z: torch.Tensor, theta: torch.Tensor,
            tolerances: tuple[float, float, float, int]) -> torch.Tensor:
    max_step, reltol, abstol, max_iter = tolerances
    best = float("inf")
    for _ in range(max_iter):
        _, g, m = residual(P, p, z, theta)
        dz = torch.linalg.solve(m, g.unsqueeze(-1)).squeeze(-1)
        big = dz.abs().amax(dim=-1, keepdim=True)
        scale = torch.clamp(max_step / big.clamp_min(1e-300), max=1.0)
        z = z + dz * scale
        size = float((dz.abs() / (reltol * z.abs() + abstol)).max())
        if size <= 1.0 or (size >= best and size * reltol < 1e-12):
            return z  # converged, or stagnated at rounding level
        if not size < float("inf"):
            break
        best = min(best, size)
    raise RuntimeError(f"reference Newton did not converge (scaled step {best:.3g})")


def reference_step(lin: Sequence[torch.Tensor], P: Sequence[torch.Tensor], theta: torch.Tensor,
        u: torch.Tensor, x0: torch.Tensor, residual: Residual, z_init: torch.Tensor | None = None,
        tolerances: tuple[float, float, float, int] = (0.5, 1e-14, 1e-15, 200)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run a formulation's recursion in torch; differentiable in ``lin``, ``P``, ``theta``, ``u``, ``x0``.

    ``lin = (A, ..., H)``; ``u`` (batch, T, Nu), ``x0`` (batch, Nx), ``z_init`` (batch, Nz) the first
    Newton guess.  ``tolerances = (max_step, reltol, abstol, max_iter)``: each Newton step is capped
    at ``max_step`` (units of ``z``).  Returns ``y`` (batch, T, Ny), the final state (batch, Nx)
    and the unknowns (batch, T, Nz).
    """
    A, B, C, D, E, F, G, H = lin
    batch, T, _ = u.shape
    nz = G.shape[0]
    z = torch.zeros(batch, nz, dtype=u.dtype) if z_init is None else z_init.detach().clone()
    P_d = [m.detach() for m in P]
    x = x0
    ys, zs = [], []
    for n in range(T):
        un = u[:, n]
        p = x @ G.T + un @ H.T
        with torch.no_grad():
            z_star = _newton(residual, P_d, p.detach(), z.detach(), theta.detach(), tolerances)
        _, g, m = residual(P, p, z_star, theta)
        z = z_star + torch.linalg.solve(m.detach(), g.unsqueeze(-1)).squeeze(-1)
        phi, _, _ = residual(P, p, z, theta)
        ys.append(x @ D.T + un @ E.T + phi @ F.T)
        x = x @ A.T + un @ B.T + phi @ C.T
        zs.append(z)
    y = torch.stack(ys, dim=1) if ys else torch.zeros(batch, 0, D.shape[0], dtype=u.dtype)
    zt = torch.stack(zs, dim=1) if zs else torch.zeros(batch, 0, nz, dtype=u.dtype)
    return y, x, zt


def dk_residual(nonlinearity: Nonlinearity) -> Residual:
    """The DK residual in torch: ``phi = f(v)``, ``g = p + K f(v) - v``, ``M = I - K J`` (``P = (K,)``)."""

    def residual(P: Sequence[torch.Tensor], p: torch.Tensor, v: torch.Tensor, theta: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (K,) = P
        f, jac = nonlinearity.torch_eval(v, theta, jacobian=True)
        eye = torch.eye(v.shape[-1], dtype=v.dtype)
        return f, p + f @ K.T - v, eye - K @ jac

    return residual


def reference_state_space(matrices: Sequence[torch.Tensor], theta: torch.Tensor, u: torch.Tensor,
        x0: torch.Tensor, nonlinearity: Nonlinearity, v_init: torch.Tensor | None = None, *, max_step: float = 0.5,
        reltol: float = 1e-14, abstol: float = 1e-15, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the DK recursion in torch; differentiable in every matrix, ``theta``, ``u`` and ``x0``.

    ``matrices = (A, ..., H, K)``; ``u`` (batch, T, Nu), ``x0`` (batch, Nx), ``v_init`` (batch, Nv)
    the first Newton guess.  ``max_step`` (volts) caps each Newton step.  Returns ``y`` (batch,
    T, Ny), the final state (batch, Nx) and the port voltages (batch, T, Nv).
    """
    mats = tuple(matrices)
    return reference_step(mats[:8], mats[8:], theta, u, x0, dk_residual(nonlinearity), v_init,
                          (max_step, reltol, abstol, max_iter))


__all__ = ["dk_residual", "reference_state_space", "reference_step"]
