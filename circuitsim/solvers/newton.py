"""Batched damped Newton iteration in torch (the reference solver; the compiled kernels have their own)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from circuitsim.errors import CircuitsimError


class NewtonError(CircuitsimError, RuntimeError):
    """A Newton solve failed after its fallbacks.  Names the sample and time when known.

    ``partial``: what a sample-by-sample runner solved before the failing sample, when it keeps it
    (``(output, boundary, statistics)`` of :mod:`circuitsim.solvers.substep`), so that substepping
    resumes at the failure instead of running those samples again.
    """

    partial: Any = None  # a class default, so that subclasses with their own __init__ have it too

    def __init__(self, message: str, sample: int | None = None, time: float | None = None):
        where = ""
        if sample is not None:
            where = f" at sample {sample}" + (f" (t = {time:.6g} s)" if time is not None else "")
        super().__init__(f"Newton did not converge{where}: {message}")
        self.sample = sample
        self.time = time


@dataclass
class NewtonResult:
    x: torch.Tensor
    iterations: int
    converged: bool
    residual: float


ResidualFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


ABSTOL = 1e-13  # volts / amperes: the step test's and the rounding test's absolute floor


def newton(
    fn: ResidualFn,
    x0: torch.Tensor,
    *,
    limit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    reltol: float = 1e-11,
    abstol: float = ABSTOL,
    max_iter: int = 100,
    check_residual: bool = True,
) -> NewtonResult:
    """Solve ``F(x) = 0`` for a batch ``x`` of shape (batch, n); ``fn`` returns (F, dF/dx).

    ``limit(x, dx)`` may shorten the step (SPICE-style junction limiting); the step test is
    ``max|dx| <= reltol max|x| + abstol`` for every batch item, on the full (unlimited) step: a
    per-unknown test would chase rounding noise on near-zero unknowns.  Being relative to the
    largest unknown, it also passes at a state that has run off to a branch current of 7e50 A,
    where ``F`` is 1e82; so with ``check_residual`` an answer is accepted only where the equations
    hold at it to rounding (:func:`at_rounding_level`), evaluated at the new point, which is the
    next iteration's evaluation when they do not.  ``iterations`` counts evaluations of ``fn``.
    """
    x = x0
    res = float("inf")
    prev_step = None
    small = False  # the last step passed the step test: x is accepted if its residual is at rounding level
    for it in range(1, max_iter + 2):
        f, jac = fn(x)
        res = float(f.abs().max()) if f.numel() else 0.0
        if not torch.isfinite(f).all():
            return NewtonResult(x, it, False, float("nan"))
        if small and at_rounding_level(f, jac, x, abstol):
            return NewtonResult(x, it, True, res)
        if it > max_iter:
            break
        try:
            dx = -torch.linalg.solve(jac, f.unsqueeze(-1)).squeeze(-1)
        except torch.linalg.LinAlgError:  # singular (e.g. a junction driven far forward): caller falls back
            return NewtonResult(x, it, False, res)
        full = dx
        step = full.abs().amax(-1)
        if prev_step is not None and bool((step > 0.5 * prev_step).all()) and at_rounding_level(f, jac, x, abstol):
            # no longer contracting and the residual is rounding noise: an ill-conditioned system
            # (e.g. a 1e-5 ohm pot end stop, cond ~ 5e8) is solved as well as float64 allows
            return NewtonResult(x, it, True, res)
        prev_step = step
        if limit is not None:
            dx = limit(x, dx)
        x = x + dx
        small = bool((step <= reltol * x.abs().amax(-1) + abstol).all())
        if small and not check_residual:
            return NewtonResult(x, it, True, res)
    return NewtonResult(x, max_iter, False, res)


def at_rounding_level(f: torch.Tensor, jac: torch.Tensor, x: torch.Tensor, abstol: float) -> bool:
    """True when every residual row is within rounding of its own terms (a backward error of a few ulps).

    Row ``i`` passes when ``|F_i| <= 8 n eps (|J| |x|)_i + abstol max_j |J_ij|``: the residual is
    what float64 products of that size leave behind, or what a change of ``abstol`` volts in the
    unknowns would cause (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., §7.1).
    """
    n = x.shape[-1]
    eps = torch.finfo(x.dtype).eps
    terms = (jac.abs() @ x.abs().unsqueeze(-1)).squeeze(-1)
    return bool((f.abs() <= 8 * n * eps * terms + abstol * jac.abs().amax(-1)).all())
