"""Sympy -> numba / torch code generation, shared by device families and behavioural blocks.

A device's equations are written once, as a :class:`Program`: a list of named statements
``y = g(ports, params, earlier statements)`` whose right-hand sides are sympy expressions,
with regions as a top-level ``Piecewise`` (``docs/architecture.md``, "Adding a device family").
From a program this module produces, with ``sympy.diff`` and ``sympy.cse``:

* the numba forward with its Jacobian ``df/dv`` by forward-mode chain rule over the
  statements (:meth:`Program.numba_eval_source`); a ``Piecewise`` statement becomes an
  ``if``/``elif``/``else`` so that only the active region is evaluated, and each region's
  value and local derivatives are common-subexpression-eliminated together;
* the numba parameter VJP ``g += (df/dp)^T mu`` by reverse-mode chain rule over the same
  statements (:meth:`Program.numba_vjp_source`);
* for the adjoint, both in one pass (:meth:`Program.numba_tape_source`): the forward with its Jacobian
  that also writes the VJP's local partials into a tape, every region's value, Jacobian and partials
  common-subexpression-eliminated together, and the reverse sweep over that tape alone;
* torch functions for ``f`` and ``(f, J)`` (:meth:`Program.torch_functions`), differentiable by
  autograd; a region is evaluated only on the elements where it is active (masked gather and
  scatter), so unused regions never put ``inf`` or ``nan`` into values or gradients.  Autograd of
  the torch ``f`` is therefore an independent check of the generated Jacobian and VJP.

The expression printer (:class:`Emitter`) and the sympy helper functions are also what
``circuitsim.kernels.nonlinearity`` uses for behavioural (B-source) blocks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sympy
import torch

from circuitsim.devices.constants import EXP_LIMIT

DTYPE = torch.float64

# --------------------------------------------------------------------------- sympy functions


class softplus(sympy.Function):  # noqa: N801 (sympy function naming)
    """``log(1 + exp(x))``, evaluated stably; derivative ``sigmoid(x)``."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sigmoid(self.args[0])

    def _eval_is_extended_real(self) -> bool | None:
        return self.args[0].is_extended_real


class sigmoid(sympy.Function):  # noqa: N801
    """``1 / (1 + exp(-x))``, evaluated stably."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _eval_is_extended_real(self) -> bool | None:
        return self.args[0].is_extended_real


class xpow(sympy.Function):  # noqa: N801
    """``b**e`` with a symbolic exponent, for parameter derivatives: ``d/de = xpowlog(b, e)``."""

    nargs = 2

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        b, e = self.args
        if argindex == 1:
            return e * xpow(b, e - 1)
        return xpowlog(b, e)


class xpowlog(sympy.Function):  # noqa: N801
    """``b**e * log(b)``, taken as 0 at ``b = 0`` (the limit for ``e > 0``, as torch's pow backward)."""

    nargs = 2


class powlog(sympy.Function):  # noqa: N801
    """``w log(b)`` with ``w = b**e`` given, 0 at ``b = 0``: :class:`xpowlog` sharing the ``pow`` of ``b**e``
    (numba only; the adjoint's tape, ``circuitsim.kernels.nonlinearity``)."""

    nargs = 2


class limexp_d(sympy.Function):  # noqa: N801
    """``exp(min(x, EXP_LIMIT))``: the derivative of :class:`limexp` (docs/devices.md, overflow guard)."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        # d/dx exp(min(x, L)) is exp(x) below L and 0 above; the device equations never need it
        # (it would be a second derivative), so it is left unsupported rather than approximated
        raise NotImplementedError("second derivative of limexp")


class limexp(sympy.Function):  # noqa: N801
    """``exp(x)`` continued linearly above EXP_LIMIT: ``exp(L) (1 + x - L)`` (docs/devices.md)."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return limexp_d(self.args[0])


class pow1m(sympy.Function):  # noqa: N801
    """``a**(1 - m)`` formed as ngspice does, ``a exp(-m log a)``, with its exact derivatives.

    Written as one function so that ``d/da = (1 - m) exp(-m log a)`` keeps the factor ``1 - m``
    symbolic: in a depletion charge ``(1 - a**(1-m))/(1 - m)`` it then cancels, and the
    capacitance is ngspice's ``C0 exp(-m log a)`` instead of a difference that loses digits as
    ``m -> 1``.
    """

    nargs = 2

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        a, m = self.args
        if argindex == 1:
            return (1 - m) * sympy.exp(-m * sympy.log(a))
        return -pow1m(a, m) * sympy.log(a)


class npow(sympy.Function):  # noqa: N801
    """``a**n`` for ``a > 0``, evaluated with ``sqrt`` when ``n == 0.5`` (bjtload.c's NKF default: a
    pow costs several times a sqrt); derivatives ``n a**n / a`` and ``a**n log a``."""

    nargs = 2

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        a, n = self.args
        if argindex == 1:
            return n * npow(a, n) / a
        return npow(a, n) * sympy.log(a)


class powdiv(sympy.Function):  # noqa: N801
    """``b**(e - 1)`` formed as ``w / b`` from ``w = b**e`` (numba only): a power and its derivative
    then share one ``pow``; at ``b = 0`` it is ``b**(e - 1)`` itself (0 for e > 1, the Koren cut-off)."""

    nargs = 3


def shared_powers(d: sympy.Expr) -> sympy.Expr:
    """``b**(e - 1)`` with a symbolic ``e`` (the derivative of ``b**e``) as :class:`powdiv` of ``b**e``,
    so that common-subexpression elimination gives the value and its derivative one ``pow``."""

    def hit(x: sympy.Basic) -> bool:
        return isinstance(x, sympy.Pow) and not x.exp.is_number and x.exp.as_coeff_Add()[0] == -1

    def sub(x: sympy.Pow) -> sympy.Expr:
        e = x.exp + 1
        return powdiv(x.base, sympy.Pow(x.base, e), e)

    return d.replace(hit, sub)


class _div(sympy.Function):  # noqa: N801
    """``a / b`` kept as a division for printing (see :func:`divisions`)."""

    nargs = 2


def _negative_power(f: sympy.Basic) -> bool:
    return isinstance(f, sympy.Pow) and f.exp.is_Number and bool(f.exp < 0)


def divisions(e: sympy.Expr) -> sympy.Expr:
    """Products with negative powers as divisions ``num / den``, as the C sources write them.

    sympy stores ``a/b`` as ``a * b**-1``; printed so, and with ``b**-1`` shared by CSE, it becomes
    a multiplication by a rounded reciprocal (1 ulp from ``a/b``, a few ulps after ``exp``).
    """

    def split(m: sympy.Mul) -> sympy.Expr:
        num = [f for f in m.args if not _negative_power(f)]
        den = [f.base ** (-f.exp) for f in m.args if _negative_power(f)]
        return _div(sympy.Mul(*num), sympy.Mul(*den))

    e = e.replace(lambda x: isinstance(x, sympy.Mul) and any(_negative_power(f) for f in x.args), split)
    return e.replace(_negative_power, lambda f: _div(sympy.S.One, f.base ** (-f.exp)))


class recip(sympy.Function):  # noqa: N801
    """``1 / x`` as one shared value (numba device code, :func:`reciprocals`); printed as a division."""

    nargs = 1


def reciprocals(e: sympy.Expr) -> sympy.Expr:
    """Integer negative powers ``b**-n`` as ``recip(b)**n``, so that common-subexpression elimination gives
    every quotient by ``b`` in a region (a value and its derivatives: ``a/b``, ``c/b**2``) one division.

    A division costs several multiplications' throughput and latency (a Gummel-Poon region divides by
    ``qb`` five times); ``a * (1/b)`` differs from ``a / b`` by at most one rounding.
    """

    def hit(x: sympy.Basic) -> bool:
        return isinstance(x, sympy.Pow) and x.exp.is_Integer and bool(x.exp < 0)

    return e.replace(hit, lambda x: recip(x.base) ** int(-x.exp))


def zero_steps(d: sympy.Expr) -> sympy.Expr:
    """Derivatives of sign / Heaviside (DiracDelta or unevaluated) are 0 almost everywhere."""

    def step_derivative(x: sympy.Basic) -> bool:
        return isinstance(x, sympy.DiracDelta) or (
            isinstance(x, sympy.Derivative) and isinstance(x.expr, (sympy.sign, sympy.Heaviside))
        )

    return d.replace(step_derivative, lambda x: sympy.S.Zero)


NB_FUNCS: dict[type, str] = {
    sympy.exp: "math.exp",
    sympy.log: "math.log",
    sympy.sin: "math.sin",
    sympy.cos: "math.cos",
    sympy.tan: "math.tan",
    sympy.sinh: "math.sinh",
    sympy.cosh: "math.cosh",
    sympy.tanh: "math.tanh",
    sympy.asin: "math.asin",
    sympy.acos: "math.acos",
    sympy.atan: "math.atan",
    sympy.atan2: "math.atan2",
    sympy.Abs: "abs",
    sympy.sign: "_sign",
    sympy.floor: "math.floor",
    sympy.ceiling: "math.ceil",
    softplus: "_softplus",
    sigmoid: "_sigmoid",
    xpow: "_xpow",
    xpowlog: "_xpowlog",
    powlog: "_powlog",
    limexp: "_limexp",
    limexp_d: "_limexp_d",
    pow1m: "_pow1m",
    npow: "_npow",
    powdiv: "_powdiv",
}
TORCH_FUNCS: dict[type, str] = {
    sympy.exp: "torch.exp",
    sympy.log: "torch.log",
    sympy.sin: "torch.sin",
    sympy.cos: "torch.cos",
    sympy.tan: "torch.tan",
    sympy.sinh: "torch.sinh",
    sympy.cosh: "torch.cosh",
    sympy.tanh: "torch.tanh",
    sympy.asin: "torch.asin",
    sympy.acos: "torch.acos",
    sympy.atan: "torch.atan",
    sympy.atan2: "_tatan2",
    sympy.Abs: "torch.abs",
    sympy.sign: "torch.sign",
    sympy.floor: "torch.floor",
    sympy.ceiling: "torch.ceil",
    softplus: "_tsoftplus",
    sigmoid: "torch.sigmoid",
    limexp: "_tlimexp",
    limexp_d: "_tlimexp_d",
    pow1m: "_tpow1m",
    npow: "torch.pow",
}


class Emitter:
    """Prints a sympy expression as fully parenthesised Python for numba or torch."""

    def __init__(self, names: Mapping[sympy.Symbol, str], target: str):
        self.names = names
        self.torch = target == "torch"

    def __call__(self, e: sympy.Basic) -> str:
        if isinstance(e, sympy.Symbol):
            if e not in self.names:
                raise ValueError(f"unbound symbol {e} in a behavioural expression")
            return self.names[e]
        if e in (sympy.true, sympy.false):
            return "True" if e == sympy.true else "False"
        if not e.free_symbols:
            try:
                value = float(e)
            except TypeError as exc:
                raise ValueError(f"cannot evaluate constant {e} to a float") from exc
            return f"({value!r})"
        if isinstance(e, sympy.Add):
            return "(" + " + ".join(self(a) for a in e.args) + ")"
        if isinstance(e, sympy.Mul):
            return "(" + " * ".join(self(a) for a in e.args) + ")"
        if isinstance(e, sympy.Pow):
            return self._pow(*e.args)
        if isinstance(e, _div):
            return f"({self(e.args[0])} / {self(e.args[1])})"
        if isinstance(e, recip):
            return f"(1.0 / {self(e.args[0])})"
        if isinstance(e, sympy.Heaviside):
            h0 = float(e.args[1]) if len(e.args) > 1 else 0.5
            x = self(e.args[0])
            if self.torch:
                return f"_theaviside({x}, {h0!r})"
            return f"_heaviside({x}, {h0!r})"
        if isinstance(e, (sympy.Max, sympy.Min)):
            fn = (
                ("_tmax" if self.torch else "max")
                if isinstance(e, sympy.Max)
                else ("_tmin" if self.torch else "min")
            )
            out = self(e.args[0])
            for a in e.args[1:]:
                out = f"{fn}({out}, {self(a)})"
            return out
        if isinstance(e, sympy.Piecewise):
            return self._piecewise(e.args)
        if isinstance(e, sympy.core.relational.Relational):
            ops = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "!=": "!="}
            return f"({self(e.lhs)} {ops[e.rel_op]} {self(e.rhs)})"
        if isinstance(e, (sympy.And, sympy.Or)):
            op = (
                (" & " if isinstance(e, sympy.And) else " | ")
                if self.torch
                else (" and " if isinstance(e, sympy.And) else " or ")
            )
            return "(" + op.join(self(a) for a in e.args) + ")"
        if isinstance(e, sympy.Not):
            return f"(~{self(e.args[0])})" if self.torch else f"(not {self(e.args[0])})"
        table = TORCH_FUNCS if self.torch else NB_FUNCS
        fn = table.get(type(e))
        if fn is None:
            raise ValueError(f"function {type(e).__name__} is not supported in behavioural expressions")
        return f"{fn}(" + ", ".join(self(a) for a in e.args) + ")"

    def _pow(self, base: sympy.Expr, ex: sympy.Expr) -> str:
        b = self(base)
        sq = "torch.sqrt" if self.torch else "math.sqrt"
        if ex == 1:
            return b
        r = float(ex) if ex.is_number else 0.0
        if not self.torch and (2 * r).is_integer() and not r.is_integer() and abs(r) < 5:
            # b**(k + 1/2) = b**k sqrt(b) (netlists write 1.5 as a float): a sqrt costs a fraction of
            # a pow (torch keeps pow: its gradient at b = 0 would be 0 * inf through sqrt)
            k = int(abs(r) - 0.5)
            pos = f"{sq}({b})" if k == 0 else f"({self._pow(base, sympy.Integer(k))} * {sq}({b}))"
            return pos if r > 0 else f"(1.0 / {pos})"
        if ex == 2:
            return f"({b} * {b})"
        if ex == 3:
            return f"({b} * {b} * {b})"
        if ex == 4:
            return f"(({b} * {b}) * ({b} * {b}))"
        if ex.is_Integer and -4 <= int(ex) < 0:
            return f"(1.0 / {self._pow(base, -ex)})"
        if ex == sympy.S.Half:
            return f"{sq}({b})"
        if ex == -sympy.S.Half:
            return f"(1.0 / {sq}({b}))"
        if ex.is_Integer:
            return f"({b} ** {int(ex)})"
        return f"({b} ** {self(ex)})"

    def _piecewise(self, args: Sequence[tuple[sympy.Expr, sympy.Basic]]) -> str:
        (val, cond), rest = args[0], args[1:]
        if cond == sympy.true or not rest:
            return self(val)
        other = self._piecewise(rest)
        if self.torch:
            return f"torch.where({self(cond)}, {self(val)}, {other})"
        return f"({self(val)} if {self(cond)} else {other})"


def cse_code(
    exprs: Sequence[sympy.Expr], names: Mapping[sympy.Symbol, str], target: str, prefix: str, indent: str,
    divide: bool | str = False,
) -> tuple[list[str], list[str]]:
    """Common-subexpression-eliminated assignment lines and the output expressions.

    ``divide``: True prints quotients as divisions (:func:`divisions`; the torch code of device
    programs, for parity with the C sources); ``"shared"`` gives each denominator one division and
    multiplies by its reciprocal (:func:`reciprocals`; the numba code of device programs); False
    leaves sympy's products with reciprocal powers (behavioural blocks).
    """
    syms = sympy.numbered_symbols(f"{prefix}c")
    if divide == "shared":
        exprs = [reciprocals(sympy.sympify(e)) for e in exprs]
    elif divide:
        exprs = [divisions(sympy.sympify(e)) for e in exprs]
    repl, reduced = sympy.cse(list(exprs), symbols=syms)
    names = dict(names)
    lines = []
    for s, sub in repl:
        names[s] = str(s)
        lines.append(f"{indent}{s} = {Emitter(names, target)(sub)}")
    return lines, [Emitter(names, target)(r) for r in reduced]


# --------------------------------------------------------------------------- runtime helpers

# helpers pasted into every generated numba module (devices and behavioural blocks)
NB_HELPERS = f"""
@njit(cache=True, inline="always")
def _sign(x):
    return 1.0 if x > 0.0 else (-1.0 if x < 0.0 else 0.0)


@njit(cache=True, inline="always")
def _heaviside(x, h0):
    return 1.0 if x > 0.0 else (0.0 if x < 0.0 else h0)


@njit(cache=True, inline="always")
def _softplus(x):
    # log(1 + exp(x)) without overflow; exp(-|x|) unconditionally, so that a softplus and the
    # sigmoid of its derivative share one exp after inlining
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(cache=True, inline="always")
def _sigmoid(x):
    z = math.exp(-abs(x))
    return 1.0 / (1.0 + z) if x >= 0.0 else z / (1.0 + z)


@njit(cache=True, inline="always")
def _powdiv(b, w, e):
    # b**(e - 1) from w = b**e (program.powdiv)
    return w / b if b != 0.0 else b ** (e - 1.0)


@njit(cache=True, inline="always")
def _xpow(b, e):
    return b ** e


@njit(cache=True, inline="always")
def _xpowlog(b, e):
    # b**e log(b), 0 at b = 0 (the limit for e > 0; torch's pow backward does the same)
    if b == 0.0:
        return 0.0
    return b ** e * math.log(b)


@njit(cache=True, inline="always")
def _powlog(b, w):
    # w log(b) with w = b**e, 0 at b = 0 (program.powlog)
    if b == 0.0:
        return 0.0
    return w * math.log(b)


@njit(cache=True, inline="always")
def _limexp(x):
    # exp(x), continued linearly above EXP_LIMIT (docs/devices.md, overflow guard); the same
    # exp(min(x, L)) as _limexp_d, so that a value and its derivative share one exp after inlining
    return math.exp(min(x, {EXP_LIMIT!r})) * (1.0 + max(x - {EXP_LIMIT!r}, 0.0))


@njit(cache=True, inline="always")
def _limexp_d(x):
    return math.exp(min(x, {EXP_LIMIT!r}))


@njit(cache=True, inline="always")
def _pow1m(a, m):
    return a * math.exp(-m * math.log(a))


@njit(cache=True, inline="always")
def _npow(a, n):
    return math.sqrt(a) if n == 0.5 else a ** n


@njit(cache=True, inline="always")
def _pnjlim(vnew, vold, vt, vcrit):
    # SPICE junction voltage limiting, ngspice src/spicelib/devices/devsup.c DEVpnjlim
    if vnew > vcrit and abs(vnew - vold) > vt + vt:
        if vold > 0.0:
            arg = (vnew - vold) / vt
            if arg > 0.0:
                return vold + vt * (2.0 + math.log(arg - 2.0))
            return vold - vt * (2.0 + math.log(2.0 - arg))
        return vt * math.log(vnew / vt)
    if vnew < 0.0:
        arg = -vold - 1.0 if vold > 0.0 else 2.0 * vold - 1.0
        if vnew < arg:
            return arg
    return vnew
"""


def _t(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=DTYPE)


def _tmax(a: Any, b: Any) -> torch.Tensor:
    return torch.maximum(_t(a), _t(b))


def _tmin(a: Any, b: Any) -> torch.Tensor:
    return torch.minimum(_t(a), _t(b))


def _theaviside(x: Any, h0: float) -> torch.Tensor:
    x = _t(x)
    return torch.heaviside(x.detach(), torch.tensor(h0, dtype=x.dtype))


def _tsoftplus(x: Any) -> torch.Tensor:
    x = _t(x)
    return torch.logaddexp(torch.zeros_like(x), x)


def _tatan2(a: Any, b: Any) -> torch.Tensor:
    return torch.atan2(_t(a), _t(b))


def _tlimexp(x: Any) -> torch.Tensor:
    x = _t(x)
    return torch.exp(torch.clamp(x, max=EXP_LIMIT)) * (1.0 + torch.clamp(x - EXP_LIMIT, min=0.0))


def _tlimexp_d(x: Any) -> torch.Tensor:
    return torch.exp(torch.clamp(_t(x), max=EXP_LIMIT))


def _tpow1m(a: Any, m: Any) -> torch.Tensor:
    a = _t(a)
    return a * torch.exp(-_t(m) * torch.log(a))


def _select(shape: torch.Size, conds: Sequence[Any], arms: Sequence[Callable[..., tuple]],
            args: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Evaluate each region only where it is the first whose condition holds; scatter the results.

    The gradient of an output then flows only through the region that produced it, so an
    unused region (a reverse-bias formula at 0 V, a disabled knee) cannot leak ``nan``.
    """
    if math.prod(shape) == 1:  # one point: plain Python control flow
        for cond, arm in zip(conds, arms):
            if bool(torch.as_tensor(cond).reshape(-1)[0]):
                return tuple(_t(r).reshape(()).expand(shape) for r in arm(*args))
        raise ValueError("no region of a device statement holds (nan input?)")
    full = [_t(a).expand(shape) for a in args]
    left = torch.ones(shape, dtype=torch.bool)
    outs: list[torch.Tensor] | None = None
    for cond, arm in zip(conds, arms):
        m = left & torch.as_tensor(cond).expand(shape)
        left = left & ~m
        count = int(m.sum())
        if count == 0:
            continue
        res = arm(*(a[m] for a in full))
        if outs is None:
            outs = [torch.zeros(shape, dtype=DTYPE) for _ in res]
        outs = [o.masked_scatter(m, _t(r).expand(count)) for o, r in zip(outs, res)]
    if outs is None:  # all points nan: evaluate the last region to learn how many outputs there are
        res = arms[-1](*(a[:0] for a in full))
        outs = [torch.full(shape, math.nan, dtype=DTYPE) for _ in res]
    return tuple(outs)


TORCH_NAMESPACE: dict[str, Any] = {
    "torch": torch,
    "math": math,
    "_tmax": _tmax,
    "_tmin": _tmin,
    "_theaviside": _theaviside,
    "_tsoftplus": _tsoftplus,
    "_tatan2": _tatan2,
    "_tlimexp": _tlimexp,
    "_tlimexp_d": _tlimexp_d,
    "_tpow1m": _tpow1m,
    "_select": _select,
}


def cache_dir() -> Path:
    """Where generated kernel modules (and numba's cache of them) are written."""
    root = os.environ.get("CIRCUITSIM_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "circuitsim" / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- programs


def _pieces(expr: sympy.Expr) -> list[tuple[sympy.Expr, sympy.Basic]]:
    """The regions of a statement: ``[(value, condition), ...]`` (one region ``True`` if not Piecewise)."""
    if isinstance(expr, sympy.Piecewise):
        return [(e, c) for e, c in expr.args]
    return [(expr, sympy.true)]


# library calls per function in the generated numba code (pow1m, xpow, xpowlog: log then exp)
_CALLS: dict[type, int] = {sympy.exp: 1, sympy.log: 1, limexp: 1, limexp_d: 1, npow: 1, sigmoid: 1, softplus: 2,
                           pow1m: 2, xpow: 2, xpowlog: 2}


def _call_depth(expr: sympy.Basic) -> int:
    """The longest chain of dependent library calls (exp, log, pow) in ``expr``."""
    inner = max((_call_depth(a) for a in expr.args), default=0)
    return inner + _CALLS.get(type(expr), 0)


def _has_piecewise(expr: sympy.Basic) -> bool:
    return any(isinstance(a, sympy.Piecewise) for a in sympy.preorder_traversal(expr))


@dataclass
class Program:
    """A device's equations: ports, parameter slots, statements and outputs (see the module doc).

    Build it with :meth:`port`, :meth:`param`, :meth:`let` and :meth:`output`.  A statement is
    either branch free or a top-level ``Piecewise`` whose values are branch free (nest regions by
    writing several statements); conditions may use anything defined before.  Parameters are
    read from a slot vector ``p`` by index; ``grad=False`` parameters get no VJP entry.
    """

    name: str
    ports: list[sympy.Symbol] = field(default_factory=list)
    params: list[tuple[sympy.Symbol, int, bool]] = field(default_factory=list)  # symbol, slot, grad
    stmts: list[tuple[sympy.Symbol, sympy.Expr]] = field(default_factory=list)
    outputs: list[tuple[str, sympy.Symbol]] = field(default_factory=list)
    zero_if: dict[sympy.Symbol, sympy.Basic] = field(default_factory=dict)  # statement -> "exactly 0 when"

    def _sym(self, name: str) -> sympy.Symbol:
        taken = {str(s) for s in self.ports} | {str(s) for s, _, _ in self.params} | {str(s) for s, _ in self.stmts}
        base, k = name, 2
        while name in taken:
            name = f"{base}_{k}"
            k += 1
        return sympy.Symbol(name, real=True)

    def port(self, name: str) -> sympy.Symbol:
        """A controlling voltage (volts)."""
        s = self._sym(f"v_{name}")
        self.ports.append(s)
        return s

    def param(self, name: str, slot: int, grad: bool = True) -> sympy.Symbol:
        """The parameter in slot ``slot`` of the device's vector."""
        s = self._sym(f"p_{name}")
        self.params.append((s, int(slot), grad))
        return s

    def let(self, name: str, expr: sympy.Expr, zero_if: sympy.Basic | None = None) -> sympy.Symbol:
        """A named intermediate ``name = expr``; returns its symbol.

        ``zero_if``: a condition on parameters under which ``expr`` is exactly 0 for every ``v``
        (``Eq(ISC, 0)`` for a leakage current); the compiled forward then skips the statement at
        run time, as the C sources do.  The VJP and torch code evaluate it anyway, because its
        parameter derivative need not be 0 there.
        """
        expr = sympy.sympify(expr)
        for val, cond in _pieces(expr):
            if _has_piecewise(val) or _has_piecewise(cond):
                raise ValueError(f"{self.name}.{name}: a region must be a whole statement (no nested Piecewise)")
        s = self._sym(f"l_{name}")
        self.stmts.append((s, expr))
        if zero_if is not None:
            self.zero_if[s] = sympy.sympify(zero_if)
        return s

    def output(self, name: str, expr: sympy.Expr) -> sympy.Symbol:
        """A device output (current, charge); also usable in later statements."""
        s = self.let(name, expr)
        self.outputs.append((name, s))
        return s

    @property
    def param_names(self) -> list[str]:
        """The names given to :meth:`param`, in order."""
        return [str(s)[2:] for s, _, _ in self.params]

    # ---- analysis
    def restricted(self, names: Sequence[str]) -> Program:
        """The program computing only the outputs ``names`` (dead statements removed)."""
        keep = [(n, s) for n, s in self.outputs if n in set(names)]
        need = {s for _, s in keep}
        stmts = []
        for s, e in reversed(self.stmts):
            if s in need:
                stmts.append((s, e))
                need |= e.free_symbols
        zero_if = {s: c for s, c in self.zero_if.items() if any(s == t for t, _ in stmts)}
        return Program(self.name, list(self.ports), list(self.params), stmts[::-1], keep, zero_if)

    def _jacobian_statements(self) -> tuple[list[tuple[sympy.Symbol, list]], dict]:
        """Per statement, its regions with ``[value, dvalue/dport_0, ...]`` (forward-mode chain rule)."""
        nport = len(self.ports)
        deriv: dict[sympy.Symbol, list[sympy.Expr]] = {
            v: [sympy.S.One if i == j else sympy.S.Zero for i in range(nport)] for j, v in enumerate(self.ports)
        }
        plan = []
        for y, expr in self.stmts:
            live = [x for x in expr.free_symbols if x in deriv]
            dsyms: list[sympy.Symbol | None] = []
            for j in range(nport):
                dep = any(deriv[x][j] != 0 for x in live)
                dsyms.append(sympy.Symbol(f"{y}__d{j}", real=True) if dep else None)
            regions = []
            for val, cond in _pieces(expr):
                row = [val]
                for j, ds in enumerate(dsyms):
                    if ds is not None:
                        row.append(zero_steps(sum((sympy.diff(val, x) * deriv[x][j] for x in live
                                                   if deriv[x][j] != 0), sympy.S.Zero)))
                regions.append((row, cond))
            if y in self.zero_if:  # the compiled forward skips it (value and derivatives 0)
                regions.insert(0, ([sympy.S.Zero] * len(regions[0][0]), self.zero_if[y]))
            plan.append((y, dsyms, regions))
            deriv[y] = [sympy.S.Zero if ds is None else ds for ds in dsyms]
        return plan, deriv

    def _names(self, target: str) -> dict[sympy.Symbol, str]:
        names: dict[sympy.Symbol, str] = {v: str(v) for v in self.ports}
        for s, slot, _ in self.params:
            names[s] = f"p[{slot}]" if target == "numba" else str(s)
        for y, _ in self.stmts:
            names[y] = str(y)
        return names

    @staticmethod
    def _emit_regions(lines: list[str], lhs: Sequence[str], regions: Sequence[tuple[list, sympy.Basic]],
                      names: dict, prefix: str) -> None:
        # a statement: straight-line if it has one region, else if/elif/else with per-region CSE
        def block(row: list, indent: str) -> None:
            body, outs = cse_code(row, names, "numba", prefix, indent, divide="shared")
            lines.extend(body)
            for name, o in zip(lhs, outs):
                lines.append(f"{indent}{name} = {o}")

        if len(regions) == 1:
            block(regions[0][0], "    ")
            return
        for k, (row, cond) in enumerate(regions):
            last = k == len(regions) - 1
            if last and cond == sympy.true:
                lines.append("    else:")
            else:
                lines.append(f"    {'if' if k == 0 else 'elif'} {Emitter(names, 'numba')(cond)}:")
            block(row, "        ")
        if regions[-1][1] != sympy.true:  # sympy closes every Piecewise with True; guard anyway
            lines.append("    else:")
            lines.append("        raise ValueError('no region holds')")

    def _schedule(self, plan: list) -> list[tuple[int, tuple]]:
        """The order in which the numba forward emits the statements: ``[(index, plan entry), ...]``.

        A statement whose value reads only ports and parameters and holds a chain of two or more
        library calls (a depletion charge's ``log`` then ``exp``) comes first, deepest first, the
        others keep their order.  Each such chain is the longest latency of an evaluation and is
        independent of the rest, so started first it runs in the shadow of the currents (out-of-order
        execution; the generated code is straight-line per region, and a CPU overlaps only what its
        instruction window holds).  Values are unchanged: each statement's code is the same.
        """
        stmt_syms = {y for y, _ in self.stmts}
        first = []
        for n, (_, expr) in enumerate(self.stmts):
            if expr.free_symbols & stmt_syms:
                continue
            depth = max(_call_depth(val) for val, _ in _pieces(expr))
            if depth >= 2:
                first.append((-depth, n))
        lead = [n for _, n in sorted(first)]
        order = lead + [n for n in range(len(plan)) if n not in set(lead)]
        return [(n, plan[n]) for n in order]

    def _vector_exps(self, plan: list, names: dict) -> tuple[list[str], dict]:
        """The ``limexp`` of the forward as :func:`circuitsim.devices.vecmath.vexp4` calls: ``(lines, substitutions)``.

        The arguments that read only ports and parameters (a junction's ``v / (N Vt)``), three or more of them,
        go four to a call at the top of the function, in every region (an exponential a region does not use
        costs nothing in a lane); ``limexp(x)`` becomes ``E (1 + max(x - EXP_LIMIT, 0))`` and ``limexp_d(x)``
        ``E``, with ``E = exp(min(x, EXP_LIMIT))`` from the call (the same formulas as ``_limexp``).  Arguments of
        statements without a ``zero_if`` skip (used whenever their region is) fill the calls first; a last one
        alone keeps its scalar call.  Nothing where libmvec is missing (``vecmath.AVAILABLE``).
        """
        from circuitsim.devices import vecmath

        if not vecmath.AVAILABLE:
            return [], {}
        base = set(self.ports) | {s for s, _, _ in self.params}
        args: list[tuple[bool, int, sympy.Expr]] = []
        seen = set()
        for y, _, regions in plan:
            for row, _ in regions:
                for e in row:
                    for f in sympy.preorder_traversal(e):
                        a = f.args[0] if isinstance(f, (limexp, limexp_d)) else None
                        if a is not None and a.free_symbols <= base and a not in seen:
                            seen.add(a)
                            args.append((y in self.zero_if, len(args), a))
        if len(args) < 3:
            return [], {}
        args.sort(key=lambda t: t[:2])
        lanes = vecmath.LANES
        keep = len(args) - (len(args) % lanes == 1)
        lines, subs = [], {}
        emit = Emitter(names, "numba")
        lim = sympy.Float(EXP_LIMIT)  # E (1 + max(x - L, 0)): NaN in E is NaN in the value whatever max gives
        for c in range(0, keep, lanes):
            chunk = [a for _, _, a in args[c:min(c + lanes, keep)]]
            outs = [sympy.Symbol(f"e_vx{c + i}", real=True) for i in range(len(chunk))]
            for a, e in zip(chunk, outs):
                names[e] = str(e)
                subs[limexp(a)] = e * (1 + sympy.Max(a - lim, 0))
                subs[limexp_d(a)] = e
            # min(x, L) in _limexp's order: numba's min, as Python's, returns its first argument where a NaN
            # makes the comparison false, so that a NaN port voltage stays NaN (Newton's divergence test)
            ins = [f"min({emit(a)}, {EXP_LIMIT!r})" for a in chunk] + ["0.0"] * (lanes - len(chunk))
            pad = ["_"] * (lanes - len(chunk))
            lines.append(f"    {', '.join([str(e) for e in outs] + pad)}, = _vexp4({', '.join(ins)})")
        return lines, subs

    def numba_eval_source(self, fname: str, decorator: str) -> str:
        """``fname(v_0, ..., p) -> (f_0, ..., J_00, J_01, ...)``: outputs, then the Jacobian row by row.

        The exponentials of the ports go through :meth:`_vector_exps` (four to a libmvec call) where it applies."""
        plan, deriv = self._jacobian_statements()
        names = self._names("numba")
        lines = [decorator, f"def {fname}({', '.join(str(v) for v in self.ports)}, p):"]
        vec, subs = self._vector_exps(plan, names)
        if vec:
            lines[:0] = ["from circuitsim.devices.vecmath import vexp4 as _vexp4", "", ""]
            lines += vec
            plan = [(y, d, [([e.xreplace(subs) for e in row], cond) for row, cond in regions])
                    for y, d, regions in plan]
        for n, (y, dsyms, regions) in self._schedule(plan):
            lhs = [str(y)] + [str(d) for d in dsyms if d is not None]
            for d in dsyms:
                if d is not None:
                    names[d] = str(d)
            self._emit_regions(lines, lhs, regions, names, f"c{n}_")
        rets = [str(s) for _, s in self.outputs]
        for _, s in self.outputs:
            rets += [Emitter(names, "numba")(d) for d in deriv[s]]
        lines.append(f"    return ({', '.join(rets)},)")
        return "\n".join(lines) + "\n"

    def _local_partials(self, expr: sympy.Expr) -> tuple[list[sympy.Symbol], list[list[sympy.Expr]]]:
        """The symbols a statement's reverse sweep needs its partials by (earlier statements and the
        parameters with a VJP entry), and per region those partials."""
        grad_params = {s for s, _, g in self.params if g}
        lets = {y for y, _ in self.stmts}
        wrt = sorted((x for x in expr.free_symbols if x in lets or x in grad_params), key=str)
        return wrt, [[zero_steps(sympy.diff(val, x)) for x in wrt] for val, _ in _pieces(expr)]

    def _sweep_lines(self, partials: Sequence[tuple[sympy.Symbol, Sequence[tuple[sympy.Symbol, str]]]],
                     mus: Sequence[str]) -> list[str]:
        # the reverse-mode chain rule over the statements: a_y = sum over later uses of a_use * d use / d y,
        # from the outputs' mu back, and g[slot] += a_y * d y / d param; ``partials``: per statement, the
        # (symbol, printed partial) pairs of its regions' local partials
        grad_params = {s: slot for s, slot, g in self.params if g}
        lines = []
        adj: dict[sympy.Symbol, str] = {}
        for k, (_, s) in enumerate(self.outputs):
            name = f"a_{s}"
            lines.append(f"    {name} = {mus[k]}" if s not in adj else f"    {name} += {mus[k]}")
            adj[s] = name
        for y, pairs in reversed(partials):
            if y not in adj:
                continue
            for x, ps in pairs:
                if x in grad_params:
                    lines.append(f"    g[{grad_params[x]}] += {adj[y]} * {ps}")
                elif x in adj:
                    lines.append(f"    {adj[x]} += {adj[y]} * {ps}")
                else:
                    adj[x] = f"a_{x}"
                    lines.append(f"    {adj[x]} = {adj[y]} * {ps}")
        return lines

    def numba_vjp_source(self, fname: str, decorator: str) -> str:
        """``fname(v_0, ..., p, mu_0, ..., g)``: ``g[slot] += sum_k mu_k df_k/dp[slot]`` (reverse mode)."""
        names = self._names("numba")
        mus = [f"mu_{k}" for k in range(len(self.outputs))]
        lines = [decorator, f"def {fname}({', '.join(str(v) for v in self.ports)}, p, {', '.join(mus)}, g):"]
        partials: list[tuple[sympy.Symbol, list[tuple[sympy.Symbol, str]]]] = []
        for n, (y, expr) in enumerate(self.stmts):
            wrt, prows = self._local_partials(expr)
            psyms = [sympy.Symbol(f"{y}__p_{x}", real=True) for x in wrt]
            for ps in psyms:
                names[ps] = str(ps)
            regions = [([val] + pr, cond) for (val, cond), pr in zip(_pieces(expr), prows)]
            self._emit_regions(lines, [str(y)] + [str(p) for p in psyms], regions, names, f"c{n}_")
            partials.append((y, [(x, str(ps)) for x, ps in zip(wrt, psyms)]))
        lines += self._sweep_lines(partials, mus)
        lines.append("    return")
        return "\n".join(lines) + "\n"

    def numba_tape_source(self, fname: str, decorator: str) -> tuple[str, int]:
        """The forward with Jacobian and the parameter VJP in one pass, for the adjoint: ``(source, tape size)``.

        ``fname_grad(v_0, ..., p, t)`` returns what ``fname`` (:meth:`numba_eval_source`) returns and writes
        into ``t`` the local partials of the reverse sweep (the ``y__p_x`` of :meth:`numba_vjp_source`),
        each region's value, Jacobian and partials common-subexpression-eliminated together (the exp of a
        junction, the softplus of a triode: once); ``fname_sweep(t, mu_0, ..., g)`` is then the sweep alone,
        ``g[slot] += sum_k mu_k df_k/dp[slot]``, multiply-adds of the tape.  A partial that is the same number
        in every region is a literal of the sweep, not a tape entry.  A ``zero_if`` statement is evaluated
        (its parameter partials need not be 0 there), as in the VJP.
        """
        plan, deriv = self._jacobian_statements()
        names = self._names("numba")
        ports = ", ".join(str(v) for v in self.ports)
        lines = [decorator, f"def {fname}_grad({ports}, p, t):"]
        partials: dict[int, tuple[sympy.Symbol, list[tuple[sympy.Symbol, str]]]] = {}
        size = 0
        for n, (y, dsyms, regions) in self._schedule(plan):
            if y in self.zero_if:
                regions = regions[1:]
            wrt, prows = self._local_partials(self.stmts[n][1])
            refs, keep = [], []
            for i in range(len(wrt)):
                vals = {pr[i] for pr in prows}
                const = vals.pop() if len(vals) == 1 else None
                if const is not None and const.is_number:
                    refs.append(Emitter(names, "numba")(const))
                else:
                    refs.append(f"t[{size}]")
                    keep.append(i)
                    size += 1
            for d in dsyms:
                if d is not None:
                    names[d] = str(d)
            lhs = [str(y)] + [str(d) for d in dsyms if d is not None] + [refs[i] for i in keep]
            rows = [(row + [pr[i] for i in keep], cond) for (row, cond), pr in zip(regions, prows)]
            self._emit_regions(lines, lhs, rows, names, f"c{n}_")
            partials[n] = (y, list(zip(wrt, refs)))
        rets = [str(s) for _, s in self.outputs]
        for _, s in self.outputs:
            rets += [Emitter(names, "numba")(d) for d in deriv[s]]
        lines.append(f"    return ({', '.join(rets)},)")
        mus = [f"mu_{k}" for k in range(len(self.outputs))]
        sweep = [decorator, f"def {fname}_sweep(t, {', '.join(mus)}, g):"]
        sweep += self._sweep_lines([partials[n] for n in sorted(partials)], mus)
        sweep.append("    return")
        return "\n".join(lines) + "\n\n\n" + "\n".join(sweep) + "\n", size

    def torch_source(self) -> str:
        """Source of ``fn_f(shape, v_0, ..., p_0, ...)`` and ``fn_fj`` (outputs, then the Jacobian rows)."""
        plan, deriv = self._jacobian_statements()
        plan = [(y, d, r[1:] if y in self.zero_if else r) for y, d, r in plan]  # no run-time skip in torch
        argn = [str(v) for v in self.ports] + [str(s) for s, _, _ in self.params]
        src: list[str] = []
        for fname, with_j in (("fn_f", False), ("fn_fj", True)):
            names = self._names("torch")
            src.append(f"def {fname}(shape, {', '.join(argn)}):")
            for n, (y, dsyms, regions) in enumerate(plan):
                keep = [j for j, d in enumerate(dsyms) if d is not None and with_j]
                lhs = [str(y)] + [str(dsyms[j]) for j in keep]
                rows = [([row[0]] + [row[1 + sum(1 for d in dsyms[:j] if d is not None)] for j in keep], cond)
                        for row, cond in regions]
                for j in keep:
                    names[dsyms[j]] = str(dsyms[j])
                if len(rows) == 1:
                    body, outs = cse_code(rows[0][0], names, "torch", f"c{n}_", "    ", divide=True)
                    src.extend(body)
                    src.extend(f"    {name} = {o}" for name, o in zip(lhs, outs))
                    continue
                free = sorted(set().union(*(sympy.Tuple(*row).free_symbols for row, _ in rows)), key=str)
                arms = []
                for k, (row, _) in enumerate(rows):
                    arm_names = {s: f"a{i}" for i, s in enumerate(free)}
                    body, outs = cse_code(row, arm_names, "torch", f"r{k}_", "        ", divide=True)
                    src.append(f"    def _arm{n}_{k}({', '.join(arm_names[s] for s in free)}):")
                    src.extend(body)
                    src.append(f"        return ({', '.join(outs)},)")
                    arms.append(f"_arm{n}_{k}")
                conds = ", ".join(Emitter(names, "torch")(c) for _, c in rows)
                args = ", ".join(names[s] for s in free)
                src.append(f"    {', '.join(lhs)}, = _select(shape, ({conds},), ({', '.join(arms)},), ({args},))")
            rets = [str(s) for _, s in self.outputs]
            if with_j:
                for _, s in self.outputs:
                    rets += [Emitter(names, "torch")(d) for d in deriv[s]]
            src.append(f"    return ({', '.join(rets)},)")
            src.append("")
        return "\n".join(src)


# --------------------------------------------------------------------------- generated code, cached


@dataclass
class Generated:
    """The code generated from one program: numba source text and the torch functions."""

    numba: str
    torch_f: Callable[..., tuple[torch.Tensor, ...]]
    torch_fj: Callable[..., tuple[torch.Tensor, ...]]
    n_outputs: int
    n_ports: int
    n_tape: int = 0  # entries of the tape that {fname}_grad writes and {fname}_sweep reads


_GENERATED: dict[str, Generated] = {}


def generate(program: Program, fname: str, inline: bool, key_extra: str = "") -> Generated:
    """Generate (or load from the disk cache) the numba ``{fname}`` / ``{fname}_vjp`` and torch code.

    sympy's ``diff`` and ``cse`` take seconds on a full Gummel-Poon program, so the generated text
    is cached in :func:`cache_dir`, keyed by the program itself (its ``srepr``) and this file.
    """
    h = hashlib.sha256(sympy.srepr((program.ports, program.params, program.stmts, program.outputs,
                                    sorted(program.zero_if.items(), key=str))).encode())
    h.update(Path(__file__).read_bytes())
    from circuitsim.devices import vecmath  # the forward's exponentials depend on libmvec being there

    h.update(f"{fname}|{inline}|{key_extra}|{vecmath.AVAILABLE}".encode())
    key = h.hexdigest()[:24]
    if key in _GENERATED:
        return _GENERATED[key]
    path = cache_dir() / f"device_{fname}_{key}.json"
    text = None
    if path.exists():
        try:
            text = json.loads(path.read_text())
        except (OSError, ValueError):
            text = None
    if text is None:
        deco = '@njit(cache=True, inline="always")' if inline else "@njit(cache=True)"
        tape, n_tape = program.numba_tape_source(fname, deco)
        text = {
            "numba": program.numba_eval_source(fname, deco) + "\n\n" + program.numba_vjp_source(f"{fname}_vjp", deco)
            + "\n\n" + tape,
            "torch": program.torch_source(),
            "tape": n_tape,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(text, fh)
        os.replace(tmp, path)  # atomic, as load_generated
    ns = dict(TORCH_NAMESPACE)
    exec(compile(text["torch"], f"<circuitsim device {fname}>", "exec"), ns)  # noqa: S102 (generated code)
    gen = Generated(text["numba"], ns["fn_f"], ns["fn_fj"], len(program.outputs), len(program.ports), text["tape"])
    _GENERATED[key] = gen
    return gen


def torch_call(gen: Generated, program: Program, volts: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
               jacobian: bool) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Evaluate generated torch code: ``(f_k, ...)`` and, with ``jacobian``, ``[[df_k/dv_j]]``.

    ``volts``: one tensor per port (broadcastable); ``params``: one per program parameter.
    """
    volts = [_t(v).to(DTYPE) for v in volts]
    params = [_t(p).to(DTYPE) for p in params]
    shape = torch.broadcast_shapes(*(v.shape for v in volts), *(p.shape for p in params))
    fn = gen.torch_fj if jacobian else gen.torch_f
    res = [_t(r).expand(shape) for r in fn(shape, *volts, *params)]
    no = gen.n_outputs
    f = res[:no]
    jac = [res[no + k * gen.n_ports: no + (k + 1) * gen.n_ports] for k in range(no)] if jacobian else []
    return f, jac


__all__ = [
    "NB_FUNCS",
    "NB_HELPERS",
    "TORCH_FUNCS",
    "TORCH_NAMESPACE",
    "Emitter",
    "Generated",
    "Program",
    "cache_dir",
    "cse_code",
    "generate",
    "limexp",
    "limexp_d",
    "npow",
    "pow1m",
    "powdiv",
    "powlog",
    "recip",
    "reciprocals",
    "shared_powers",
    "sigmoid",
    "softplus",
    "torch_call",
    "xpow",
    "xpowlog",
    "zero_steps",
]
