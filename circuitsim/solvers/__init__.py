"""Nonlinear solvers: damped Newton and the DC operating point."""

from circuitsim.solvers.newton import NewtonError, NewtonResult, newton

__all__ = ["NewtonError", "NewtonResult", "newton"]
