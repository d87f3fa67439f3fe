"""Expressions of ``{...}`` values, ``.param`` lines and behavioural sources.

Grammar and semantics follow ngspice's B-source parser (``src/spicelib/parser/inpptree-parser.y``
and ``ptfuncs.c``), checked against ngspice 39:

- precedence, lowest first: ``c ? a : b`` (right associative) < ``||`` < ``&&`` <
  ``== !=`` < ``< > <= >=`` < ``+ -`` < ``* /`` < unary ``- + !`` < ``^``/``**``;
- ``^`` is LEFT associative as in ngspice (``2^3^2`` = 64) and binds tighter than unary
  minus (``-2^2`` = -4);
- ``x^y`` = ``x**y`` = ``pow(x, y)`` = ``|x|^y`` (ngspice ``PTpower``: ``pow(fabs(x), y)``);
- ``pwr(x, y)`` = ``sgn(x)|x|^y`` (ngspice ``PTpwr``); ``pwrs`` is the same (PSpice PWRS).
  Note PSpice's own ``PWR`` is ``|x|^y``: a PSpice netlist whose ``PWR`` argument goes
  negative behaves differently here, exactly as it does in ngspice;
- ``ln`` and ``log`` are natural logarithms, ``log10`` base 10; ``uramp(x)`` = max(x, 0);
  ``u(x)`` the unit step (1/2 at 0); ``u2(x)`` = clamp(x, 0, 1); ``sgn`` the sign;
- comparisons and ``&& || !`` give 1.0 or 0.0; ``if(c, a, b)``, ``ternary_fcn(c, a, b)`` and
  ``c ? a : b`` are all :class:`~circuitsim.netlist.ast.Cond`;
- ``limit(x, lo, hi)`` = min(max(x, lo), hi) (PSpice LIMIT; ngspice 39 has no such B-source
  function and returns 0 for it, so the parser warns when it is used);
- constants ``pi`` and ``e`` (unless a ``.param`` of that name is in the environment).

``V(a)``, ``V(a, b)`` and ``I(Vx)`` become :class:`NodeV` and :class:`BranchI` (``V(a, 0)``
and ``V(a, gnd)`` are normalised to ``V(a)``).  :func:`evaluate` looks them up in ``env``
under the node object itself or under the keys ``("V", pos, neg)`` (``neg`` ``None`` for a
single node) and ``("I", name)``.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields, replace
from typing import Any

from circuitsim.netlist.ast import Binary, BranchI, Call, Cond, Expr, Loc, Name, NodeV, Num, Span, Unary
from circuitsim.netlist.errors import NetlistError
from circuitsim.netlist.units import EXPR_NUMBER_RE, number_problem, value_of

#: built-in functions and their number of arguments
FUNCTIONS: dict[str, int] = {
    **{
        f: 1
        for f in (
            "abs sgn sqrt exp ln log log10 sin cos tan asin acos atan sinh cosh tanh asinh acosh atanh "
            "u u2 uramp floor ceil"
        ).split()
    },
    "min": 2,
    "max": 2,
    "pow": 2,
    "pwr": 2,
    "pwrs": 2,
    "limit": 3,
}
CONDITIONAL_FUNCTIONS = ("if", "ternary_fcn")  # parsed into Cond
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
GROUND_NAMES = ("0", "gnd")

_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (
    "**",
    "==",
    "!=",
    "<=",
    ">=",
    "&&",
    "||",
    "^",
    "*",
    "/",
    "+",
    "-",
    "(",
    ")",
    ",",
    "?",
    ":",
    "<",
    ">",
    "!",
)
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_COMPARISONS = tuple(_COMPARE)


def normalise_node(name: str) -> str:
    """Node names are lower case and ``gnd`` is ground ``0``."""
    low = name.strip().lower()
    return "0" if low in GROUND_NAMES else low


# ---------------------------------------------------------------- parsing


class _Parser:
    """Recursive descent over text[start:end]."""

    def __init__(
        self,
        text: str,
        start: int,
        end: int,
        span_of: Callable[[int, int], Span | None],
        loc_of: Callable[[int], Loc | None],
        user_funcs: Mapping[str, int],
    ):
        self.text = text
        self.pos = start
        self.end = end
        self.span_of = span_of
        self.loc_of = loc_of
        self.user_funcs = user_funcs
        self.start0 = start
        self._tok: tuple[str, str, int, int] | None = None
        self._tok_pos = -1

    # -------------------------------------------------------- tokens
    def error(self, message: str, pos: int | None = None) -> NetlistError:
        return NetlistError(message, self.loc_of(self.pos if pos is None else pos))

    def peek(self) -> tuple[str, str, int, int]:
        """(kind, text, start, end); kind is 'num', 'id', 'op', 'other' or 'eof'."""
        if self._tok is not None and self._tok_pos == self.pos:
            return self._tok
        text, p = self.text, self.pos
        while p < self.end and text[p] in " \t\n":
            p += 1
        if p >= self.end:
            tok = ("eof", "", p, p)
        elif text[p].isdigit() or (text[p] == "." and p + 1 < self.end and text[p + 1].isdigit()):
            m = EXPR_NUMBER_RE.match(text, p, self.end)
            assert m is not None
            q = m.end()
            if q < self.end and (text[q].isdigit() or text[q] == "."):
                r = q
                while r < self.end and (text[r].isalnum() or text[r] == "."):
                    r += 1
                raise self.error(number_problem(text[p:r]), p)
            tok = ("num", text[p:q], p, q)
        elif text[p].isalpha() or text[p] == "_":
            m = _IDENT_RE.match(text, p, self.end)
            tok = ("id", m.group(0), p, m.end()) if m else ("other", text[p], p, p + 1)
        else:
            for op in _OPERATORS:
                if text.startswith(op, p) and p + len(op) <= self.end:
                    tok = ("op", op, p, p + len(op))
                    break
            else:
                tok = ("other", text[p], p, p + 1)
        self._tok, self._tok_pos = tok, self.pos
        return tok

    def advance(self) -> tuple[str, str, int, int]:
        tok = self.peek()
        self.pos = tok[3]
        self._tok = None
        return tok

    def at_op(self, *ops: str) -> bool:
        kind, text, _, _ = self.peek()
        return kind == "op" and text in ops

    def expect(self, op: str) -> None:
        if not self.at_op(op):
            raise self.unexpected(f"expected '{op}'")
        self.advance()

    def unexpected(self, what: str = "") -> NetlistError:
        kind, text, start, _ = self.peek()
        found = "end of expression" if kind == "eof" else f"'{text}'"
        prefix = f"{what}, found " if what else "unexpected "
        return self.error(f"{prefix}{found} in expression '{self.text_slice()}'", start)

    def text_slice(self) -> str:
        return self.text[self.start0 : self.end].strip()

    # -------------------------------------------------------- grammar
    def parse(self, whole: bool) -> Expr:
        if self.peek()[0] == "eof":
            raise self.error("empty expression")
        expr = self.ternary()
        if whole and self.peek()[0] != "eof":
            raise self.unexpected()
        return expr

    def ternary(self) -> Expr:
        cond = self.binary(0)
        if self.at_op("?"):
            self.advance()
            then = self.ternary()
            self.expect(":")
            other = self.ternary()
            return Cond(cond, then, other)
        return cond

    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("||",),
        ("&&",),
        ("==", "!="),
        ("<", ">", "<=", ">="),
        ("+", "-"),
        ("*", "/"),
    )

    def binary(self, level: int) -> Expr:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.at_op(*self._LEVELS[level]):
            op = self.advance()[1]
            left = Binary(op, left, self.binary(level + 1))
        return left

    def unary(self) -> Expr:
        if self.at_op("-", "+", "!"):
            op, start = self.advance()[1:3]
            return self._fold(op, start, self.unary())
        return self.power()

    def power(self) -> Expr:
        left = self.atom()
        while self.at_op("^", "**"):  # left associative, as ngspice's '%left ^'
            self.advance()
            left = Binary("^", left, self.power_operand())
        return left

    def power_operand(self) -> Expr:
        if self.at_op("-", "+"):
            op, start = self.advance()[1:3]
            return self._fold(op, start, self.power_operand())
        return self.atom()

    def _fold(self, op: str, start: int, arg: Expr) -> Expr:
        """``-5`` is the literal -5 (span includes the sign) when the sign touches the number."""
        if op in "+-" and isinstance(arg, Num) and arg.span is not None:
            span = self.span_of(start, start + 1)
            if span is not None and span.line == arg.span.line and span.end == arg.span.start:
                value = -arg.value if op == "-" else arg.value
                return Num(value, Span(span.file, span.line, span.start, arg.span.end))
        if op in "+-" and isinstance(arg, Num) and arg.span is None:
            return Num(-arg.value if op == "-" else arg.value)
        return Unary(op, arg)

    def atom(self) -> Expr:
        kind, text, start, end = self.peek()
        if kind == "num":
            self.advance()
            m = EXPR_NUMBER_RE.fullmatch(text)
            assert m is not None
            return Num(value_of(*m.groups()), self.span_of(start, end))
        if kind == "id":
            self.advance()
            name = text.lower()
            if not self.at_op("("):
                return Name(name)
            if name in ("v", "i"):
                return self.probe(name, start)
            self.advance()
            args: list[Expr] = []
            if not self.at_op(")"):
                args.append(self.ternary())
                while self.at_op(","):
                    self.advance()
                    args.append(self.ternary())
            self.expect(")")
            return self.call(name, args, start)
        if self.at_op("("):
            self.advance()
            inner = self.ternary()
            self.expect(")")
            return inner
        raise self.unexpected("expected a number, a name or '('")

    def probe(self, kind: str, start: int) -> Expr:
        """``V(a)``, ``V(a, b)``, ``I(Vx)``: the arguments are raw names (``V(net-1)`` is fine)."""
        open_ = self.advance()[2]
        close = self.text.find(")", open_, self.end)
        if close < 0:
            raise self.error(f"unterminated '{kind.upper()}(' in expression", start)
        args = [a.strip() for a in self.text[open_ + 1 : close].split(",")]
        self.pos = close + 1
        self._tok = None
        if any(not a or any(c.isspace() or c in "()" for c in a) for a in args):
            raise self.error(
                f"bad {kind.upper()}(...) argument '{self.text[open_ + 1 : close].strip()}'", start
            )
        if kind == "i":
            if len(args) != 1:
                raise self.error("I(...) takes the name of one voltage source", start)
            return BranchI(args[0].upper())
        if len(args) > 2:
            raise self.error("V(...) takes one or two node names", start)
        pos = normalise_node(args[0])
        neg = normalise_node(args[1]) if len(args) == 2 else None
        return NodeV(pos, None if neg == "0" else neg)

    def call(self, name: str, args: list[Expr], start: int) -> Expr:
        if name in CONDITIONAL_FUNCTIONS:
            if len(args) != 3:
                raise self.error(
                    f"{name}() takes 3 arguments (condition, then, else), got {len(args)}", start
                )
            return Cond(*args)
        arity = FUNCTIONS.get(name, self.user_funcs.get(name))
        if arity is None:
            raise self.error(f"unknown function '{name}'", start)
        if len(args) != arity:
            raise self.error(
                f"{name}() takes {arity} argument{'s' if arity != 1 else ''}, got {len(args)}", start
            )
        return Call(name, tuple(args))


def parse_expr(text: str, loc: Loc | None = None, *, user_funcs: Mapping[str, int] | None = None) -> Expr:
    """Parse a whole expression (without its braces).  Errors name ``loc``.

    Literal numbers get spans on ``loc.line`` with columns counted from the start of
    ``text`` (useful only when ``text`` is a whole line).
    """
    loc = loc or Loc("<expr>", 1)
    p = _Parser(
        text, 0, len(text), lambda s, e: Span(loc.file, loc.line, s, e), lambda _: loc, user_funcs or {}
    )
    return p.parse(whole=True)


def parse_expr_in(
    text: str,
    start: int,
    end: int,
    span_of: Callable[[int, int], Span | None],
    loc_of: Callable[[int], Loc | None],
    *,
    whole: bool,
    user_funcs: Mapping[str, int] | None = None,
) -> tuple[Expr, int]:
    """Parse text[start:end]; with ``whole=False`` stop before the first token that cannot
    continue the expression.  Returns (expression, offset where it stopped)."""
    p = _Parser(text, start, end, span_of, loc_of, user_funcs or {})
    expr = p.parse(whole)
    tok = p.peek()
    return expr, tok[2] if tok[0] != "eof" else end


# ---------------------------------------------------------------- walking


def children(expr: Expr) -> tuple[Expr, ...]:
    """The direct sub-expressions of a node."""
    if isinstance(expr, Unary):
        return (expr.arg,)
    if isinstance(expr, Binary):
        return (expr.left, expr.right)
    if isinstance(expr, Cond):
        return (expr.cond, expr.then, expr.other)
    if isinstance(expr, Call):
        return expr.args
    return ()


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of an expression, parents before children."""
    stack = [expr]
    while stack:
        e = stack.pop()
        yield e
        stack.extend(reversed(children(e)))


def free_names(expr: Expr) -> set[str]:
    """Names the expression reads (``.param`` names, and ``pi``/``e``/``time`` if used).

    Node voltages and branch currents are not names; find them with :func:`walk`.
    """
    return {e.name for e in walk(expr) if isinstance(e, Name)}


def substitute(expr: Expr, names: Mapping[str, Expr]) -> Expr:
    """Replace names by expressions (used to expand ``.func`` calls)."""
    if isinstance(expr, Name):
        return names.get(expr.name, expr)
    if isinstance(expr, (Num, NodeV, BranchI)):
        return expr
    changes: dict[str, Any] = {}
    for f in fields(expr):  # type: ignore[arg-type]
        val = getattr(expr, f.name)
        if isinstance(val, Expr):
            changes[f.name] = substitute(val, names)
        elif isinstance(val, tuple):
            changes[f.name] = tuple(substitute(v, names) for v in val)
    return replace(expr, **changes)  # type: ignore[type-var]


# ---------------------------------------------------------------- evaluation


def _sgn(x: float) -> float:
    return 1.0 if x > 0 else -1.0 if x < 0 else 0.0


def _pow(x: float, y: float) -> float:
    return math.pow(abs(x), y)


class Ops:
    """How :func:`evaluate` computes: plain floats (:data:`MATH_OPS`) or torch tensors (:data:`TORCH_OPS`)."""

    name = "abstract"

    def const(self, x: float) -> Any:
        raise NotImplementedError

    def value(self, x: Any) -> Any:
        raise NotImplementedError

    def power(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def compare(self, op: str, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def logic(self, op: str, a: Any, b: Any | None = None) -> Any:
        raise NotImplementedError

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def call(self, name: str, args: list[Any]) -> Any:
        raise NotImplementedError


class MathOps(Ops):
    """Python floats through :mod:`math`; domain errors become :class:`NetlistError`."""

    name = "math"
    _FUNCS: dict[str, Callable[..., float]] = {
        "abs": abs,
        "sgn": _sgn,
        "sqrt": math.sqrt,
        "exp": math.exp,
        "ln": math.log,
        "log": math.log,
        "log10": math.log10,
        "sin": math.sin,
        "cos": math.cos,
        "tan": math.tan,
        "asin": math.asin,
        "acos": math.acos,
        "atan": math.atan,
        "sinh": math.sinh,
        "cosh": math.cosh,
        "tanh": math.tanh,
        "asinh": math.asinh,
        "acosh": math.acosh,
        "atanh": math.atanh,
        "u": lambda x: 1.0 if x > 0 else 0.0 if x < 0 else 0.5,
        "u2": lambda x: min(max(x, 0.0), 1.0),
        "uramp": lambda x: max(x, 0.0),
        "floor": lambda x: float(math.floor(x)),
        "ceil": lambda x: float(math.ceil(x)),
        "min": min,
        "max": max,
        "pow": _pow,
        "pwr": lambda x, y: _sgn(x) * _pow(x, y),
        "pwrs": lambda x, y: _sgn(x) * _pow(x, y),
        "limit": lambda x, lo, hi: min(max(x, lo), hi),
    }

    def const(self, x: float) -> float:
        return float(x)

    def value(self, x: Any) -> float:
        return float(x)

    def power(self, a: float, b: float) -> float:
        return _pow(a, b)

    def compare(self, op: str, a: float, b: float) -> float:
        return float(_COMPARE[op](a, b))

    def logic(self, op: str, a: float, b: float | None = None) -> float:
        if op == "!":
            return float(a == 0)
        if op == "&&":
            return float(a != 0 and b != 0)
        return float(a != 0 or b != 0)

    def where(self, cond: float, a: float, b: float) -> float:
        return a if cond != 0 else b

    def call(self, name: str, args: list[Any]) -> float:
        return float(self._FUNCS[name](*args))


class TorchOps(Ops):
    """float64 torch tensors; every function keeps autograd (max via ``torch.maximum``, ...)."""

    name = "torch"
    #: distinct numbers whose tensors :meth:`const` keeps (the numbers of the netlists in use)
    CONSTANTS_KEPT = 4096

    def __init__(self) -> None:
        self._consts: dict[str, Any] = {}

    @staticmethod
    def _torch():
        import torch

        return torch

    def const(self, x: float) -> Any:
        """``x`` as a float64 scalar tensor, made once per number: an assembly evaluates the same
        expressions on every call, and a new tensor per number cost 2 us each.  The expression operations
        never write into their operands; a kept tensor that was written to in place (its version moved) or
        made to require grad is replaced, so a caller that does cannot change a later result."""
        x = float(x)
        key = x.hex()  # one key per bit pattern: -0.0 is not 0.0
        t = self._consts.get(key)
        if t is None or t._version or t.requires_grad:
            if len(self._consts) >= self.CONSTANTS_KEPT:
                self._consts.clear()
            torch = self._torch()
            t = self._consts[key] = torch.tensor(x, dtype=torch.float64)
        return t

    def value(self, x: Any) -> Any:
        torch = self._torch()
        if isinstance(x, torch.Tensor):
            return x
        return torch.tensor(float(x), dtype=torch.float64)

    def power(self, a: Any, b: Any) -> Any:
        return self._torch().abs(a) ** b

    def compare(self, op: str, a: Any, b: Any) -> Any:
        torch = self._torch()
        return _COMPARE[op](a, b).to(torch.float64)

    def logic(self, op: str, a: Any, b: Any | None = None) -> Any:
        torch = self._torch()
        if op == "!":
            return (a == 0).to(torch.float64)
        if op == "&&":
            return ((a != 0) & (b != 0)).to(torch.float64)
        return ((a != 0) | (b != 0)).to(torch.float64)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self._torch().where(cond != 0, a, b)

    def call(self, name: str, args: list[Any]) -> Any:
        torch = self._torch()
        x = args[0]
        if name in ("pwr", "pwrs"):
            return torch.sign(x) * torch.abs(x) ** args[1]
        if name == "pow":
            return torch.abs(x) ** args[1]
        if name == "min":
            return torch.minimum(x, args[1])
        if name == "max":
            return torch.maximum(x, args[1])
        if name == "limit":
            return torch.minimum(torch.maximum(x, args[1]), args[2])
        if name == "uramp":
            return torch.clamp(x, min=0.0)
        if name == "u":
            return (torch.sign(x) + 1.0) * 0.5
        if name == "u2":
            return torch.clamp(x, 0.0, 1.0)
        if name == "sgn":
            return torch.sign(x)
        if name in ("ln", "log"):
            return torch.log(x)
        return getattr(torch, name)(x)  # abs sqrt exp log10 sin ... floor ceil


MATH_OPS: Ops = MathOps()
TORCH_OPS: Ops = TorchOps()


def _lookup(expr: Expr, env: Mapping[Any, Any]) -> tuple[bool, Any]:
    if expr in env:
        return True, env[expr]
    if isinstance(expr, NodeV):
        key: tuple = ("V", expr.pos, expr.neg)
    elif isinstance(expr, BranchI):
        key = ("I", expr.source)
    else:
        return False, None
    if key in env:
        return True, env[key]
    return False, None


def evaluate(expr: Expr, env: Mapping[Any, Any], ops: Ops = MATH_OPS, loc: Loc | None = None) -> Any:
    """Value of ``expr`` with names (and ``V()``/``I()`` probes) taken from ``env``.

    ``ops`` is :data:`MATH_OPS` (floats) or :data:`TORCH_OPS` (float64 tensors, autograd
    kept).  An undefined name, an unknown function or a math domain error raises
    :class:`NetlistError` at ``loc``.
    """
    try:
        return _eval(expr, env, ops, loc)
    except NetlistError:
        raise
    except (ValueError, ZeroDivisionError, OverflowError) as exc:
        raise NetlistError(f"cannot evaluate expression: {exc}", loc) from exc


def _eval(expr: Expr, env: Mapping[Any, Any], ops: Ops, loc: Loc | None) -> Any:
    if isinstance(expr, Num):
        return ops.const(expr.value)
    if isinstance(expr, Name):
        if expr.name in env:
            return ops.value(env[expr.name])
        if expr.name in CONSTANTS:
            return ops.const(CONSTANTS[expr.name])
        raise NetlistError(f"undefined parameter '{expr.name}'", loc)
    if isinstance(expr, (NodeV, BranchI)):
        found, val = _lookup(expr, env)
        if not found:
            what = (
                f"V({expr.pos}{',' + expr.neg if expr.neg else ''})"
                if isinstance(expr, NodeV)
                else f"I({expr.source})"
            )
            raise NetlistError(
                f"{what} has no value here (node voltages only exist in behavioural sources)", loc
            )
        return ops.value(val)
    if isinstance(expr, Unary):
        a = _eval(expr.arg, env, ops, loc)
        if expr.op == "-":
            return -a
        if expr.op == "+":
            return a
        return ops.logic("!", a)
    if isinstance(expr, Binary):
        a = _eval(expr.left, env, ops, loc)
        b = _eval(expr.right, env, ops, loc)
        op = expr.op
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        if op == "/":
            return a / b
        if op in ("^", "**"):
            return ops.power(a, b)
        if op in _COMPARISONS:
            return ops.compare(op, a, b)
        if op in ("&&", "||"):
            return ops.logic(op, a, b)
        raise NetlistError(f"unknown operator '{op}'", loc)
    if isinstance(expr, Cond):
        c = _eval(expr.cond, env, ops, loc)
        if isinstance(ops, MathOps):  # lazy: only the branch taken
            return _eval(expr.then if c != 0 else expr.other, env, ops, loc)
        return ops.where(c, _eval(expr.then, env, ops, loc), _eval(expr.other, env, ops, loc))
    if isinstance(expr, Call):
        if expr.func not in FUNCTIONS:
            raise NetlistError(f"unknown function '{expr.func}'", loc)
        if len(expr.args) != FUNCTIONS[expr.func]:
            raise NetlistError(
                f"{expr.func}() takes {FUNCTIONS[expr.func]} arguments, got {len(expr.args)}", loc
            )
        return ops.call(expr.func, [_eval(a, env, ops, loc) for a in expr.args])
    raise NetlistError(f"cannot evaluate {type(expr).__name__}", loc)


# ---------------------------------------------------------------- sympy


def to_sympy(expr: Expr, symbols: Mapping[Any, Any], loc: Loc | None = None) -> Any:
    """The expression as a sympy expression.

    ``symbols`` maps names (str), :class:`NodeV`/:class:`BranchI` objects (or the keys
    ``("V", pos, neg)``/``("I", name)``) to sympy expressions.  ``pwr(x, y)`` becomes
    ``sign(x)*Abs(x)**y``, ``x^y`` ``Abs(x)**y`` (ngspice), ``uramp(x)`` ``Max(x, 0)``,
    ``ln``/``log`` ``log``, conditions ``Piecewise``.
    """
    import sympy

    def num(value: float) -> Any:
        if float(value).is_integer() and abs(value) < 1e15:
            return sympy.Integer(int(value))
        return sympy.Float(value)

    def cond(e: Expr) -> Any:
        """A sympy boolean for a condition."""
        if isinstance(e, Binary) and e.op in _COMPARISONS:
            a, b = conv(e.left), conv(e.right)
            return {
                "<": sympy.Lt,
                ">": sympy.Gt,
                "<=": sympy.Le,
                ">=": sympy.Ge,
                "==": sympy.Eq,
                "!=": sympy.Ne,
            }[e.op](a, b)
        if isinstance(e, Binary) and e.op in ("&&", "||"):
            return (sympy.And if e.op == "&&" else sympy.Or)(cond(e.left), cond(e.right))
        if isinstance(e, Unary) and e.op == "!":
            return sympy.Not(cond(e.arg))
        return sympy.Ne(conv(e), 0)

    def conv(e: Expr) -> Any:
        if isinstance(e, Num):
            return num(e.value)
        if isinstance(e, Name):
            if e.name in symbols:
                return symbols[e.name]
            if e.name == "pi":
                return sympy.pi
            if e.name == "e":
                return sympy.E
            raise NetlistError(f"undefined parameter '{e.name}'", loc)
        if isinstance(e, (NodeV, BranchI)):
            found, val = _lookup(e, symbols)
            if not found:
                raise NetlistError(f"no symbol given for {e}", loc)
            return val
        if isinstance(e, Unary):
            if e.op == "!":
                return sympy.Piecewise((1, cond(e)), (0, True))
            a = conv(e.arg)
            return -a if e.op == "-" else a
        if isinstance(e, Binary):
            if e.op in _COMPARISONS or e.op in ("&&", "||"):
                return sympy.Piecewise((1, cond(e)), (0, True))
            a, b = conv(e.left), conv(e.right)
            if e.op == "+":
                return a + b
            if e.op == "-":
                return a - b
            if e.op == "*":
                return a * b
            if e.op == "/":
                return a / b
            if e.op in ("^", "**"):
                return sympy.Abs(a) ** b
            raise NetlistError(f"unknown operator '{e.op}'", loc)
        if isinstance(e, Cond):
            return sympy.Piecewise((conv(e.then), cond(e.cond)), (conv(e.other), True))
        if isinstance(e, Call):
            if e.func not in FUNCTIONS:
                raise NetlistError(f"unknown function '{e.func}'", loc)
            args = [conv(a) for a in e.args]
            x = args[0]
            f = e.func
            if f in ("pwr", "pwrs"):
                return sympy.sign(x) * sympy.Abs(x) ** args[1]
            if f == "pow":
                return sympy.Abs(x) ** args[1]
            if f == "limit":
                return sympy.Min(sympy.Max(x, args[1]), args[2])
            simple = {
                "abs": sympy.Abs,
                "sgn": sympy.sign,
                "sqrt": sympy.sqrt,
                "exp": sympy.exp,
                "ln": sympy.log,
                "log": sympy.log,
                "log10": lambda v: sympy.log(v, 10),
                "sin": sympy.sin,
                "cos": sympy.cos,
                "tan": sympy.tan,
                "asin": sympy.asin,
                "acos": sympy.acos,
                "atan": sympy.atan,
                "sinh": sympy.sinh,
                "cosh": sympy.cosh,
                "tanh": sympy.tanh,
                "asinh": sympy.asinh,
                "acosh": sympy.acosh,
                "atanh": sympy.atanh,
                "u": lambda v: sympy.Heaviside(v, sympy.S.Half),
                "u2": lambda v: sympy.Min(sympy.Max(v, 0), 1),
                "uramp": lambda v: sympy.Max(v, 0),
                "floor": sympy.floor,
                "ceil": sympy.ceiling,
                "min": sympy.Min,
                "max": sympy.Max,
            }
            return simple[f](*args)
        raise NetlistError(f"cannot convert {type(e).__name__} to sympy", loc)

    return conv(expr)
