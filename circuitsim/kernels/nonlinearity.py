"""The nonlinearity ``f: R^Nv -> R^Nf`` of a state-space model, built from device blocks.

A :class:`Nonlinearity` maps the nonlinear port voltages ``v`` (volts) to the raw device
outputs ``f`` (currents in amperes, charges in coulombs, or whatever a behavioural
expression yields) and their Jacobian ``J = df/dv``.  It is assembled from blocks:

* :class:`DiodeBlock` -- a pn junction (``circuitsim.kernels.devices.diode_nb``), current and
  optionally charge;
* :class:`BJTBlock` -- a Gummel-Poon transistor (``bjt_nb``): ``ib, ic, qbe, qbc``;
* :class:`ExprBlock` -- a sympy expression (behavioural B/E/G sources, e.g. a Koren triode).

All device parameters live in one float64 vector ``theta``; a diode or BJT block reads its
parameter vector (the layout of ``diode_params_vector`` / ``bjt_params_vector``) at an offset,
an expression reads single entries.  Two implementations are produced from the same blocks:

* ``numba_eval(v, theta, f, J, work)`` -- compiled, allocation free; generated as Python
  source into a cache directory (``$CIRCUITSIM_CACHE`` or ``~/.cache/circuitsim/kernels``)
  together with the state-space loops of :mod:`circuitsim.kernels.statespace`, so that
  ``numba``'s ``cache=True`` works across processes;
* ``nl_vjp_theta(v, theta, mu, gtheta, work)`` -- compiled, in the same module:
  ``gtheta += (df/dtheta)' mu`` for one sample, w.r.t. every theta entry including the derived
  slots of device vectors (hand-written derivatives ``diode_vjp_nb`` / ``bjt_vjp_nb``; sympy
  derivatives w.r.t. the parameter symbols of expressions); the backward loop calls it;
* :meth:`Nonlinearity.torch_eval` -- differentiable in ``v`` and ``theta``, batched over
  leading dimensions (the gradient oracle).

The kernels know nothing about circuits: the lead derives ports and outputs from a netlist.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import sympy
import torch

DTYPE = torch.float64

# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class DiodeBlock:
    """A diode junction on port ``port``: ``vd = sign * v[port]`` (volts).

    Writes the junction current (amperes, anode -> cathode) to ``f[out_i]`` and, when
    ``out_q >= 0``, the junction charge (coulombs) to ``f[out_q]``.  ``theta`` is the offset of
    the diode's parameter vector (``diode_params_vector`` layout) in the global theta.
    ``sign = -1`` lets two anti-parallel diodes share one port.
    """

    port: int
    out_i: int
    out_q: int = -1
    theta: int | slice = 0
    sign: float = 1.0


@dataclass(frozen=True)
class BJTBlock:
    """A bipolar transistor on ports ``(vbe, vbc)`` (volts, indices into ``v``).

    ``outs`` are the indices into ``f`` of ``(ib, ic, qbe, qbc)`` (amperes, coulombs; -1 =
    unused).  ``theta`` is the offset of the ``bjt_params_vector`` (which encodes polarity).
    """

    ports: tuple[int, int]
    outs: tuple[int, int, int, int]
    theta: int | slice = 0


@dataclass(frozen=True)
class ExprBlock:
    """A behavioural output ``f[out] = expr`` (sympy).

    ``ports`` binds sympy symbols to indices into ``v``; ``params`` binds symbols to indices
    into ``theta`` (learnable or fixed scalars).  Supported: + - * / **, exp, log, sqrt,
    trigonometric and hyperbolic functions, Abs, sign, Heaviside, Max, Min, Piecewise;
    ``log(1 + exp(z))`` is evaluated as a numerically stable softplus.
    """

    expr: sympy.Expr
    ports: tuple[tuple[sympy.Symbol, int], ...]
    params: tuple[tuple[sympy.Symbol, int], ...] = ()
    out: int = 0


Block = DiodeBlock | BJTBlock | ExprBlock


def _offset(theta: int | slice) -> int:
    return int(theta.start or 0) if isinstance(theta, slice) else int(theta)


# --------------------------------------------------------------------------- sympy helpers


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


def _prepare_expr(expr: sympy.Expr) -> sympy.Expr:
    w = sympy.Wild("w")
    expr = sympy.sympify(expr)
    expr = expr.replace(sympy.log(1 + sympy.exp(w)), softplus(w))
    return expr


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


def _zero_steps(d: sympy.Expr) -> sympy.Expr:
    # sign and Heaviside are piecewise constant: their derivatives (DiracDelta, or an unevaluated
    # Derivative when sympy cannot tell the argument is real) are 0 almost everywhere
    def step_derivative(x: sympy.Basic) -> bool:
        return isinstance(x, sympy.DiracDelta) or (
            isinstance(x, sympy.Derivative) and isinstance(x.expr, (sympy.sign, sympy.Heaviside))
        )

    return d.replace(step_derivative, lambda x: sympy.S.Zero)


def _param_derivative(expr: sympy.Expr, sym: sympy.Symbol) -> sympy.Expr:
    # powers with a symbolic exponent become xpow, so that d/d(exponent) is finite at a zero base
    # (the Koren triode's Max(E1, 0)**EX in cut-off)
    e = expr.replace(lambda x: isinstance(x, sympy.Pow) and not x.exp.is_number, lambda x: xpow(x.base, x.exp))
    return _zero_steps(sympy.diff(e, sym))


def _derivative(expr: sympy.Expr, sym: sympy.Symbol) -> sympy.Expr:
    d = _zero_steps(sympy.diff(expr, sym))
    # x**a / x -> x**(a-1): keeps d/dx Max(x,0)**1.4 finite at x = 0 (Koren triode cut-off)
    return sympy.powsimp(d, force=True)


_NB_FUNCS = {
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
}
_TORCH_FUNCS = {
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
}


class _Emitter:
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
        table = _TORCH_FUNCS if self.torch else _NB_FUNCS
        fn = table.get(type(e))
        if fn is None:
            raise ValueError(f"function {type(e).__name__} is not supported in behavioural expressions")
        return f"{fn}(" + ", ".join(self(a) for a in e.args) + ")"

    def _pow(self, base: sympy.Expr, ex: sympy.Expr) -> str:
        b = self(base)
        sq = "torch.sqrt" if self.torch else "math.sqrt"
        if ex == 2:
            return f"({b} * {b})"
        if ex == -1:
            return f"(1.0 / {b})"
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


def _cse_code(
    exprs: Sequence[sympy.Expr], names: Mapping[sympy.Symbol, str], target: str, prefix: str, indent: str
) -> tuple[list[str], list[str]]:
    """Common-subexpression-eliminated assignment lines and the output expressions."""
    syms = sympy.numbered_symbols(f"{prefix}c")
    repl, reduced = sympy.cse(list(exprs), symbols=syms)
    names = dict(names)
    lines = []
    for s, sub in repl:
        names[s] = str(s)
        lines.append(f"{indent}{s} = {_Emitter(names, target)(sub)}")
    return lines, [_Emitter(names, target)(r) for r in reduced]


# --------------------------------------------------------------------------- torch helpers (generated code)


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


_TORCH_NAMESPACE = {
    "torch": torch,
    "math": __import__("math"),
    "_tmax": _tmax,
    "_tmin": _tmin,
    "_theaviside": _theaviside,
    "_tsoftplus": _tsoftplus,
    "_tatan2": _tatan2,
}

# helpers pasted into every generated numba module
_NB_HELPERS = """
@njit(cache=True, inline="always")
def _sign(x):
    return 1.0 if x > 0.0 else (-1.0 if x < 0.0 else 0.0)


@njit(cache=True, inline="always")
def _heaviside(x, h0):
    return 1.0 if x > 0.0 else (0.0 if x < 0.0 else h0)


@njit(cache=True, inline="always")
def _softplus(x):
    # log(1 + exp(x)) without overflow
    if x > 0.0:
        return x + math.log1p(math.exp(-x))
    return math.log1p(math.exp(x))


@njit(cache=True, inline="always")
def _sigmoid(x):
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


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


# --------------------------------------------------------------------------- device layout (from devices.py)


def _devices() -> ModuleType:
    from circuitsim.kernels import devices  # the numba device functions (another module's contract)

    return devices


def _vt() -> float:
    from circuitsim.devices.constants import VT

    return float(VT)


def diode_theta_size() -> int:
    """Length of one diode parameter vector (raw parameters and derived constants)."""
    return len(_devices().DIODE_LAYOUT)


def bjt_theta_size() -> int:
    """Length of one BJT parameter vector."""
    return len(_devices().BJT_LAYOUT)


def diode_theta_torch(p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A diode's theta piece from named parameters (tensors; missing ones take ngspice's defaults).

    Same layout as ``devices.diode_params_vector``; differentiable in ``p``.
    """
    return _devices().diode_params_torch(p)


def bjt_theta_torch(p: Mapping[str, torch.Tensor], polarity: float) -> torch.Tensor:
    """A BJT's theta piece from named parameters (tensors) and polarity (+1 NPN, -1 PNP); differentiable."""
    return _devices().bjt_params_torch(p, polarity)


def _theta_mapping(theta: torch.Tensor, off: int, order: Sequence[str]) -> dict[str, torch.Tensor]:
    return {k: theta[off + i] for i, k in enumerate(order)}


# --------------------------------------------------------------------------- cache directory


def cache_dir() -> Path:
    """Where generated kernel modules (and numba's cache of them) are written."""
    root = os.environ.get("CIRCUITSIM_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "circuitsim" / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


_MODULES: dict[str, ModuleType] = {}
_LOCK = threading.Lock()


def load_generated(source: str, dependencies: Sequence[Path] = ()) -> ModuleType:
    """Write ``source`` to the cache directory (content-addressed) and import it.

    The file name hashes the source, the text of the modules it imports from (so a change
    there gives a new file, as numba's cache does not track callees) and numba's version.
    """
    import numba

    h = hashlib.sha256(source.encode())
    for dep in dependencies:
        h.update(Path(dep).read_bytes())
    h.update(numba.__version__.encode())
    key = h.hexdigest()[:24]
    with _LOCK:
        if key in _MODULES:
            return _MODULES[key]
        name = f"circuitsim_kernel_{key}"
        path = cache_dir() / f"{name}.py"
        if (
            not path.exists()
        ):  # content-addressed: an existing file is this source (keeps numba's cache valid)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as fh:
                fh.write(source)
            os.replace(tmp, path)  # atomic: parallel processes never see half a file
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _MODULES[key] = module
        return module


# --------------------------------------------------------------------------- the nonlinearity


@dataclass
class _TorchExpr:
    fn_f: Callable[..., tuple[torch.Tensor, ...]]
    fn_fj: Callable[..., tuple[torch.Tensor, ...]]
    ports: tuple[int, ...]
    params: tuple[int, ...]
    out: int


@dataclass
class Nonlinearity:
    """``f(v)`` and ``df/dv`` for a list of blocks; see the module docstring.

    Attributes: ``n_ports`` (Nv), ``n_outputs`` (Nf), ``n_theta`` (the smallest theta length
    the blocks read), ``n_work`` (scratch length of ``numba_eval``), ``junctions`` (the ports
    that carry a pn junction; they get SPICE step limiting in the compiled Newton).
    """

    blocks: tuple[Block, ...]
    n_ports: int
    n_outputs: int
    n_theta: int = 0
    n_work: int = 1
    junctions: tuple[int, ...] = ()
    nb_source: str = ""
    _torch_exprs: list[_TorchExpr] = field(default_factory=list, repr=False)
    _module: ModuleType | None = field(default=None, repr=False)

    # ---- compiled side
    @property
    def module(self) -> ModuleType:
        """The generated module of this nonlinearity and the DK formulation on the compiled core
        (``nl_eval``, ``nl_prepare``, ``nl_limit``, ``nl_vjp_theta``, the loops; see
        :mod:`circuitsim.kernels.codegen`)."""
        if self._module is None:
            from circuitsim.kernels import codegen

            self._module = codegen.step_module(self.nb_source)
        return self._module

    @property
    def numba_eval(self) -> Callable[..., None]:
        """Compiled ``nl_eval(v, theta, f, J, work)``: fills ``f`` (Nf) and ``J`` (Nf, Nv).

        ``work`` is a scratch array of ``n_work`` entries (the BJT kernel writes its outputs there).
        """
        return self.module.nl_eval

    def eval_numpy(self, v: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Convenience: compiled ``f(v)`` and ``J`` for one port vector (allocates; for tests)."""
        f = np.zeros(self.n_outputs)
        jac = np.zeros((self.n_outputs, self.n_ports))
        work = np.zeros(self.n_work)
        self.numba_eval(
            np.ascontiguousarray(v, dtype=np.float64),
            np.ascontiguousarray(theta, dtype=np.float64),
            f,
            jac,
            work,
        )
        return f, jac

    # ---- torch side
    def torch_eval(
        self, v: torch.Tensor, theta: torch.Tensor, jacobian: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``f(v)`` (..., Nf) and, with ``jacobian=True``, also ``J`` (..., Nf, Nv); differentiable.

        ``v`` (..., Nv) volts; ``theta`` (Ntheta,) the parameter vector.
        """
        batch = v.shape[:-1]
        zero = torch.zeros(batch, dtype=v.dtype, device=v.device)
        fcols: list[torch.Tensor | None] = [None] * self.n_outputs
        jent: dict[tuple[int, int], torch.Tensor] = {}

        def put(o: int, value: torch.Tensor, derivs: Sequence[tuple[int, torch.Tensor]]) -> None:
            if o < 0:
                return
            fcols[o] = value
            if jacobian:
                for port, d in derivs:
                    jent[(o, port)] = jent[(o, port)] + d if (o, port) in jent else d

        expr_i = 0
        for blk in self.blocks:
            if isinstance(blk, DiodeBlock):
                dev = _diode_torch()
                s = float(blk.sign)
                pm = _theta_mapping(theta, _offset(blk.theta), _devices().DIODE_PARAM_ORDER)
                i, di, q, dq = dev(s * v[..., blk.port], pm)
                put(blk.out_i, i, [(blk.port, s * di)])
                put(blk.out_q, q, [(blk.port, s * dq)])
            elif isinstance(blk, BJTBlock):
                fn = _bjt_torch()
                off = _offset(blk.theta)
                dev = _devices()
                pm = _theta_mapping(theta, off, dev.BJT_PARAM_ORDER)
                pol = float(theta[off + dev.BJT_POLARITY_INDEX].detach())
                r = fn(v[..., blk.ports[0]], v[..., blk.ports[1]], pm, pol)
                pbe, pbc = blk.ports
                vals = (r.ib, r.ic, r.qbe, r.qbc)
                ders = (
                    (r.dib_dvbe, r.dib_dvbc),
                    (r.dic_dvbe, r.dic_dvbc),
                    (r.dqbe_dvbe, r.dqbe_dvbc),
                    (r.dqbc_dvbe, r.dqbc_dvbc),
                )
                for o, val, (dbe, dbc) in zip(blk.outs, vals, ders):
                    put(o, val, [(pbe, dbe), (pbc, dbc)])
            else:
                te = self._torch_exprs[expr_i]
                expr_i += 1
                args = [v[..., k] for k in te.ports] + [theta[k] for k in te.params]
                if jacobian:
                    res = te.fn_fj(*args)
                    put(
                        te.out,
                        _bcast(res[0], zero),
                        [(k, _bcast(d, zero)) for k, d in zip(te.ports, res[1:])],
                    )
                else:
                    put(te.out, _bcast(te.fn_f(*args)[0], zero), [])
        f = (
            torch.stack([zero if c is None else _bcast(c, zero) for c in fcols], dim=-1)
            if self.n_outputs
            else torch.zeros(*batch, 0, dtype=v.dtype)
        )
        if not jacobian:
            return f
        rows = []
        for o in range(self.n_outputs):
            rows.append(
                torch.stack([_bcast(jent.get((o, k), zero), zero) for k in range(self.n_ports)], dim=-1)
                if self.n_ports
                else torch.zeros(*batch, 0, dtype=v.dtype)
            )
        jac = torch.stack(rows, dim=-2) if rows else torch.zeros(*batch, 0, self.n_ports, dtype=v.dtype)
        return f, jac


def _bcast(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    x = _t(x)
    return x if x.shape == like.shape else x.expand_as(like)


def _diode_torch() -> Callable[..., tuple[torch.Tensor, ...]]:
    from circuitsim.devices.diode import diode_junction

    return diode_junction


def _bjt_torch() -> Callable[..., Any]:
    from circuitsim.devices.bjt import bjt_junctions

    return bjt_junctions


# --------------------------------------------------------------------------- code generation


def build_nonlinearity(blocks: Sequence[Block], n_ports: int, n_outputs: int) -> Nonlinearity:
    """Assemble ``f`` from blocks; generates (but does not yet compile) the numba source."""
    blocks = tuple(blocks)
    writers: dict[int, int] = {}
    for bi, blk in enumerate(blocks):
        outs = (
            [blk.out_i, blk.out_q]
            if isinstance(blk, DiodeBlock)
            else list(blk.outs)
            if isinstance(blk, BJTBlock)
            else [blk.out]
        )
        ports = (
            [blk.port]
            if isinstance(blk, DiodeBlock)
            else list(blk.ports)
            if isinstance(blk, BJTBlock)
            else [k for _, k in blk.ports]
        )
        for o in outs:
            if o < 0:
                continue
            if o >= n_outputs:
                raise ValueError(f"block {bi} writes output {o} but there are only {n_outputs}")
            if o in writers:
                raise ValueError(f"output {o} is written by blocks {writers[o]} and {bi}")
            writers[o] = bi
        for k in ports:
            if not 0 <= k < n_ports:
                raise ValueError(f"block {bi} reads port {k} but there are only {n_ports}")

    inline = '@njit(cache=True, inline="always")'
    lines = ["", "", inline, "def nl_eval(v, theta, f, J, work):"]
    prep = ["", "", "@njit(cache=True)", "def nl_prepare(theta, lc):"]
    lim = ["", "", inline, "def nl_limit(vold, vnew, lc):"]
    # gtheta += (df/dtheta)' mu for one sample, w.r.t. every theta entry (derived slots included)
    vjp = ["", "", inline, "def nl_vjp_theta(v, theta, mu, gtheta, work):"]
    fterms: dict[int, str] = {}
    jterms: dict[tuple[int, int], list[str]] = {}
    n_theta = 0
    n_work = 1
    n_lc = 0
    junctions: list[int] = []
    torch_exprs: list[_TorchExpr] = []
    uses_devices = False
    for bi, blk in enumerate(blocks):
        if isinstance(blk, DiodeBlock):
            uses_devices = True
            dev = _devices()
            off = _offset(blk.theta)
            size = diode_theta_size()
            n_theta = max(n_theta, off + size)
            s = float(blk.sign)
            if s not in (1.0, -1.0):
                raise ValueError("DiodeBlock.sign must be +1 or -1")
            lines.append(
                f"    d{bi}_i, d{bi}_g, d{bi}_q, d{bi}_c = diode_nb({s!r} * v[{blk.port}], "
                f"theta[{off}:{off + size}])"
            )
            mu_q = f"mu[{blk.out_q}]" if blk.out_q >= 0 else "0.0"
            vjp.append(
                f"    diode_vjp_nb({s!r} * v[{blk.port}], theta[{off}:{off + size}], mu[{blk.out_i}], {mu_q}, "
                f"gtheta[{off}:{off + size}])"
            )
            fterms[blk.out_i] = f"d{bi}_i"
            jterms.setdefault((blk.out_i, blk.port), []).append(f"{s!r} * d{bi}_g")
            if blk.out_q >= 0:
                fterms[blk.out_q] = f"d{bi}_q"
                jterms.setdefault((blk.out_q, blk.port), []).append(f"{s!r} * d{bi}_c")
            # junction limiting as dioload.c: DEVpnjlim(vd, vold, vte = N Vt, tVcrit)
            layout = dev.DIODE_LAYOUT
            prep.append(f"    lc[{n_lc}] = theta[{off + layout.index('VTE')}]")
            prep.append(f"    lc[{n_lc + 1}] = theta[{off + layout.index('VCRIT')}]")
            lim.append(
                f"    vnew[{blk.port}] = {s!r} * _pnjlim({s!r} * vnew[{blk.port}], {s!r} * vold[{blk.port}], "
                f"lc[{n_lc}], lc[{n_lc + 1}])"
            )
            n_lc += 2
            junctions.append(blk.port)
        elif isinstance(blk, BJTBlock):
            uses_devices = True
            dev = _devices()
            off = _offset(blk.theta)
            size = bjt_theta_size()
            n_theta = max(n_theta, off + size)
            n_work = max(n_work, 12)
            pbe, pbc = blk.ports
            lines.append(f"    bjt_nb(v[{pbe}], v[{pbc}], theta[{off}:{off + size}], work)")
            mus = ", ".join(f"mu[{o}]" if o >= 0 else "0.0" for o in blk.outs)
            vjp.append(
                f"    bjt_vjp_nb(v[{pbe}], v[{pbc}], theta[{off}:{off + size}], {mus}, gtheta[{off}:{off + size}])"
            )
            # copy out of the scratch before another BJT overwrites it
            for k, o in enumerate(blk.outs):
                if o < 0:
                    continue
                lines.append(f"    b{bi}_{k} = work[{k}]")
                lines.append(f"    b{bi}_{k}e = work[{4 + 2 * k}]")
                lines.append(f"    b{bi}_{k}c = work[{5 + 2 * k}]")
                fterms[o] = f"b{bi}_{k}"
                jterms.setdefault((o, pbe), []).append(f"b{bi}_{k}e")
                jterms.setdefault((o, pbc), []).append(f"b{bi}_{k}c")
            # junction limiting as bjtload.c: DEVpnjlim on vbe and vbc with vt = kT/q and tVcrit,
            # in the NPN frame (polarity * v)
            vt = _vt()
            layout = dev.BJT_LAYOUT
            pol = off + dev.BJT_POLARITY_INDEX
            for port in (pbe, pbc):
                prep.append(f"    lc[{n_lc}] = {vt!r}")
                prep.append(f"    lc[{n_lc + 1}] = theta[{off + layout.index('VCRIT')}]")
                prep.append(f"    lc[{n_lc + 2}] = theta[{pol}]")
                lim.append(
                    f"    vnew[{port}] = lc[{n_lc + 2}] * _pnjlim(lc[{n_lc + 2}] * vnew[{port}], "
                    f"lc[{n_lc + 2}] * vold[{port}], lc[{n_lc}], lc[{n_lc + 1}])"
                )
                n_lc += 3
                junctions.append(port)
        elif isinstance(blk, ExprBlock):
            expr = _prepare_expr(blk.expr)
            port_syms = [s for s, _ in blk.ports]
            allowed = set(port_syms) | {s for s, _ in blk.params}
            extra = expr.free_symbols - allowed
            if extra:
                raise ValueError(f"ExprBlock for output {blk.out}: unbound symbols {sorted(map(str, extra))}")
            for _, k in blk.params:
                n_theta = max(n_theta, k + 1)
            derivs = [_derivative(expr, s) for s in port_syms]
            nb_names = {s: f"v[{k}]" for s, k in blk.ports}
            nb_names.update({s: f"theta[{k}]" for s, k in blk.params})
            body, outs = _cse_code([expr] + derivs, nb_names, "numba", f"e{bi}", "    ")
            lines.extend(body)
            lines.append(f"    e{bi}_f = {outs[0]}")
            fterms[blk.out] = f"e{bi}_f"
            for j, ((_, k), o) in enumerate(zip(blk.ports, outs[1:])):
                lines.append(f"    e{bi}_d{j} = {o}")
                jterms.setdefault((blk.out, k), []).append(f"e{bi}_d{j}")
            if blk.params:
                pderivs = [_param_derivative(expr, s) for s, _ in blk.params]
                body, pouts = _cse_code(pderivs, nb_names, "numba", f"g{bi}", "    ")
                vjp.extend(body)
                for (_, k), o in zip(blk.params, pouts):
                    vjp.append(f"    gtheta[{k}] += mu[{blk.out}] * {o}")
            torch_exprs.append(_torch_expr(expr, derivs, blk, bi))
        else:
            raise TypeError(f"unknown block type {type(blk).__name__}")

    for o in range(n_outputs):
        lines.append(f"    f[{o}] = {fterms.get(o, '0.0')}")
        for k in range(n_ports):
            terms = jterms.get((o, k))
            lines.append(f"    J[{o}, {k}] = {' + '.join(terms) if terms else '0.0'}")
    for part in (lines, prep, lim, vjp):
        part.append("    return")
    header = [
        "# generated by circuitsim.kernels.nonlinearity -- do not edit",
        "import math",
        "",
        "import numpy as np",
        "from numba import njit",
    ]
    if uses_devices:
        header.append("from circuitsim.kernels import devices as _devices")
        # the diode is inlined into the Newton loop (about 10 ns per sample faster on the clipper,
        # 4 s more compilation); the larger BJT stays a call
        header.append('diode_nb = njit(inline="always")(_devices.diode_nb.py_func)')
        header.append("bjt_nb = _devices.bjt_nb")
        header.append('diode_vjp_nb = njit(inline="always")(_devices.diode_vjp_nb.py_func)')
        header.append("bjt_vjp_nb = _devices.bjt_vjp_nb")
    header.append("from circuitsim.kernels.statespace import borrow")
    header.append(f"\nNV = {n_ports}\nNF = {n_outputs}\nN_WORK = {n_work}\nN_LC = {max(n_lc, 1)}\n")
    source = "\n".join(header) + _NB_HELPERS + "\n".join(lines + prep + lim + vjp) + "\n"
    return Nonlinearity(
        blocks=blocks,
        n_ports=n_ports,
        n_outputs=n_outputs,
        n_theta=n_theta,
        n_work=n_work,
        junctions=tuple(sorted(set(junctions))),
        nb_source=source,
        _torch_exprs=torch_exprs,
    )


def _torch_expr(expr: sympy.Expr, derivs: list[sympy.Expr], blk: ExprBlock, bi: int) -> _TorchExpr:
    argn = [f"a{i}" for i in range(len(blk.ports) + len(blk.params))]
    syms = [s for s, _ in blk.ports] + [s for s, _ in blk.params]
    names = dict(zip(syms, argn))
    src = []
    for fname, exprs in (("fn_f", [expr]), ("fn_fj", [expr] + derivs)):
        body, outs = _cse_code(exprs, names, "torch", "t", "    ")
        src.append(f"def {fname}({', '.join(argn)}):")
        src.extend(body)
        src.append(f"    return ({', '.join(outs)},)")
    ns = dict(_TORCH_NAMESPACE)
    exec(compile("\n".join(src), f"<circuitsim expr block {bi}>", "exec"), ns)  # noqa: S102 (generated code)
    return _TorchExpr(
        ns["fn_f"], ns["fn_fj"], tuple(k for _, k in blk.ports), tuple(k for _, k in blk.params), blk.out
    )


__all__ = [
    "BJTBlock",
    "Block",
    "DiodeBlock",
    "ExprBlock",
    "Nonlinearity",
    "bjt_theta_torch",
    "build_nonlinearity",
    "cache_dir",
    "diode_theta_torch",
    "load_generated",
]
