"""Building blocks of junction devices as program statements (docs/devices.md, "pn current", "depletion charge").

Each helper appends one statement to a :class:`~circuitsim.devices.program.Program` and returns its
symbol; the diode and the Gummel-Poon BJT are composed of them.  Values only: the Jacobian and the
parameter VJP are derived by the generator.
"""

from __future__ import annotations

import sympy
from sympy import Piecewise

from circuitsim.devices.constants import CONST_E
from circuitsim.devices.program import Program, limexp, pow1m

E = sympy.Float(CONST_E)  # const.h CONSTnap


def pn(b: Program, name: str, v: sympy.Expr, isat: sympy.Expr, vte: sympy.Expr,
       breakdown: tuple[sympy.Expr, sympy.Expr] | None = None, ivte: sympy.Expr | None = None) -> sympy.Symbol:
    """Junction current without GMIN (amperes): dioload.c / bjtload.c.

    ``IS (exp(v/vte) - 1)`` for ``v >= -3 vte``, else ``-IS (1 + (3 vte/(v e))^3)``; with
    ``breakdown = (BV, vtebrk)`` the diode's ``-IS exp(-(BV + v)/vtebrk)`` below ``-BV``.
    ``ivte``: a parameter holding ``1/vte`` (1/volts): the forward region then multiplies, which
    takes a division off the Newton loop's critical path (exp's argument and the conductance).
    """
    regions = [(isat * (limexp(v / vte if ivte is None else v * ivte) - 1), v >= -3 * vte)]
    if breakdown is not None:
        bv, vtebrk = breakdown
        regions.append((-isat * (1 + (3 * vte / (v * E)) ** 3), v >= -bv))
        regions.append((-isat * limexp(-(bv + v) / vtebrk), True))
    else:
        regions.append((-isat * (1 + (3 * vte / (v * E)) ** 3), True))
    return b.let(name, Piecewise(*regions), zero_if=sympy.Eq(isat, 0))


def depletion(b: Program, name: str, v: sympy.Expr, c0: sympy.Expr, vj: sympy.Expr, m: sympy.Expr,
              fcv: sympy.Expr, f1: sympy.Expr, f2: sympy.Expr, f3: sympy.Expr,
              inv: tuple[sympy.Expr, sympy.Expr] | None = None) -> sympy.Symbol:
    """Depletion charge (coulombs) with the FC linearisation above ``fcv = FC VJ`` (dioload.c, bjtload.c).

    Below: ``VJ C0 (1 - (1 - v/VJ)^(1-M))/(1-M)`` with the power as ngspice forms it,
    ``arg exp(-M log arg)``; above: ``C0 F1 + C0/F2 (F3 (v - fcv) + M/(2 VJ) (v^2 - fcv^2))``.
    ``inv``: parameters holding ``(1/VJ, 1/F2)``, multiplied instead of divided by (see :func:`pn`).
    """
    ivj, if2 = (1 / vj, 1 / f2) if inv is None else inv
    arg = 1 - v * ivj
    below = vj * c0 * (1 - pow1m(arg, m)) / (1 - m)
    above = c0 * f1 + c0 * if2 * (f3 * (v - fcv) + m * ivj / 2 * (v**2 - fcv**2))
    return b.let(name, Piecewise((below, v < fcv), (above, True)), zero_if=sympy.Eq(c0, 0))


__all__ = ["E", "depletion", "pn"]
