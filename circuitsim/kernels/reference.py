"""Plain-torch reference of the state-space recursion (the gradient oracle for the kernels).

Same recursion as :mod:`circuitsim.kernels.statespace`, one Python-level step per sample.
Each sample's Newton solve runs to convergence without autograd; then one more Newton
step with autograd on, from the converged point ``v*`` and with the Jacobian detached::

    v = v* + M^-1 (p + K f(v*) - v*),   M = I - K J(v*) (detached)

which leaves the value unchanged (the residual is ~0) and attaches exactly the
implicit-function gradient ``dv = M^-1 (dp + dK f + K df/dtheta)``.  Slow (tens of
microseconds per sample) and memory hungry: for short test signals only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from circuitsim.kernels.nonlinearity import Nonlinearity


def _newton(
    nl: Nonlinearity,
    p: torch.Tensor,
    v: torch.Tensor,
    K: torch.Tensor,
    theta: torch.Tensor,
    max_step: float,
    reltol: float,
    abstol: float,
    max_iter: int,
) -> torch.Tensor:
    eye = torch.eye(v.shape[-1], dtype=v.dtype)
    best = float("inf")
    for _ in range(max_iter):
        f, jac = nl.torch_eval(v, theta, jacobian=True)
        g = p + f @ K.T - v
        m = eye - K @ jac
        dv = torch.linalg.solve(m, g.unsqueeze(-1)).squeeze(-1)
        big = dv.abs().amax(dim=-1, keepdim=True)
        scale = torch.clamp(max_step / big.clamp_min(1e-300), max=1.0)
        v = v + dv * scale
        size = float((dv.abs() / (reltol * v.abs() + abstol)).max())
        if size <= 1.0 or (size >= best and size * reltol < 1e-12):
            return v  # converged, or stagnated at rounding level
        if not size < float("inf"):
            break
        best = min(best, size)
    raise RuntimeError(f"reference Newton did not converge (scaled step {best:.3g})")


def reference_state_space(
    matrices: Sequence[torch.Tensor],
    theta: torch.Tensor,
    u: torch.Tensor,
    x0: torch.Tensor,
    nonlinearity: Nonlinearity,
    v_init: torch.Tensor | None = None,
    *,
    max_step: float = 0.5,
    reltol: float = 1e-14,
    abstol: float = 1e-15,
    max_iter: int = 200,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the recursion in torch; differentiable in every matrix, ``theta``, ``u`` and ``x0``.

    ``u`` (batch, T, Nu), ``x0`` (batch, Nx), ``v_init`` (batch, Nv) the first Newton guess.
    ``max_step`` (volts) caps each Newton step.  Returns ``y`` (batch, T, Ny), the final state
    (batch, Nx) and the port voltages (batch, T, Nv).
    """
    A, B, C, D, E, F, G, H, K = matrices
    nl = nonlinearity
    batch, T, _ = u.shape
    nv = G.shape[0]
    eye = torch.eye(nv, dtype=u.dtype)
    v = torch.zeros(batch, nv, dtype=u.dtype) if v_init is None else v_init.detach().clone()
    x = x0
    ys, vs = [], []
    for n in range(T):
        un = u[:, n]
        p = x @ G.T + un @ H.T
        with torch.no_grad():
            v_star = _newton(
                nl, p.detach(), v.detach(), K.detach(), theta.detach(), max_step, reltol, abstol, max_iter
            )
        f, jac = nl.torch_eval(v_star, theta, jacobian=True)
        g = p + f @ K.T - v_star
        m = (eye - K @ jac).detach()
        v = v_star + torch.linalg.solve(m, g.unsqueeze(-1)).squeeze(-1)
        f = nl.torch_eval(v, theta)
        ys.append(x @ D.T + un @ E.T + f @ F.T)
        x = x @ A.T + un @ B.T + f @ C.T
        vs.append(v)
    y = torch.stack(ys, dim=1) if ys else torch.zeros(batch, 0, D.shape[0], dtype=u.dtype)
    vt = torch.stack(vs, dim=1) if vs else torch.zeros(batch, 0, nv, dtype=u.dtype)
    return y, x, vt


__all__ = ["reference_state_space"]
