"""Assemble and load the generated module of a (nonlinearity, formulation) pair.

One module holds, in this order: the nonlinearity's source (``Nonlinearity.nb_source``:
``nl_eval``, ``nl_prepare``, ``nl_limit``, ``nl_vjp_theta``, ``NV``, ``NF``, ``N_WORK``,
``N_LC``), the linear algebra of :mod:`circuitsim.kernels.linalg`, the formulation's constants
and hooks (:class:`~circuitsim.kernels.core.StepFormulation`), the core's layout constants and
its loops (:mod:`circuitsim.kernels.core`).  Everything is specialised at code-generation time:
the sizes are module constants, so numba unrolls the loops over ports and outputs and inlines
the device equations into the Newton loop.  The module is written to the cache directory and
imported by :func:`circuitsim.kernels.nonlinearity.load_generated` (content-addressed, so numba's
``cache=True`` holds across processes).

First-use compile time (``benchmarks/bench_compile.py``) is mostly numba's ``inline="always"``
machinery, typing and lowering, not LLVM.  These keep it down: numba's inliner copies each
callee's scope once per IR copy instead of once per block, skips the copy of the IR it discards, and
runs the untyped passes of each inlined function once per process instead of once per call site
(:func:`install_inline_copy`); the cold code (the start of an item, the fallbacks) calls one shared
non-inlined ``fm_eval_cold`` instead of inlining the device equations again, and that one calls the
nonlinearity module's ``nl_eval_cold``, which the DC operating point has compiled already (the
adjoint keeps its inlined copy: its loop over the saved samples is hot); and the module's
``forward_item`` has no fallbacks, which compile only when a sample first needs them
(``forward_item_full``, :data:`FORWARD_COPIES`).  The backward (``backward_item``) compiles on its
first call.  numba's live-variable analysis, which runs after every inlining and rewrite and is quadratic
in the inlined code, runs on bit sets (:func:`live_map`: the same result); the sized module calls the
loop order of ``linalg.tmv3`` that its constant sizes choose (:func:`choose_loop_orders`), so that numba
types and lowers one of the two; and where the adjoint is not taped (hooks that call the nonlinearity
more than once, :func:`_grad_hooks`) a large device VJP (a BJT's) is called as one compiled function
instead of inlined (:data:`VJP_CALL_STATEMENTS`).  Only the last changes the IR numba keeps
(a call instead of inlined code, the same arithmetic): outputs and gradients are bitwise the same.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import inspect
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from circuitsim.kernels import core, linalg
from circuitsim.kernels.core import StepFormulation

if TYPE_CHECKING:
    from circuitsim.kernels.nonlinearity import Nonlinearity

_INLINE = '@njit(cache=True, inline="always")'
_IMPORT = re.compile(r"^(?:from\s+(circuitsim[\w.]*)\s+import\s+(\([^)]*\)|[^\n]+)|import\s+(circuitsim[\w.]*))", re.M)


class _BlockCopy:
    """``copy.deepcopy`` for numba's inliner that copies the scope of an IR once per copy, not once per block.

    numba's ``InlineWorker.inline_ir`` copies a callee's IR (twice) block by block with
    ``copy.deepcopy(block)``, each with a fresh memo, so every block drags along its own copy of
    the function's whole ``Scope`` (every local variable): the cost is blocks x variables per
    inlined call site, quadratic in the inlined code (numba issues #8989, #9204).  It was ~45 % of
    the first compile of a generated module (cProfile of the diode clipper's first forward).
    Here the blocks of one IR share one copy of its scope, as the blocks of the original share the
    original: a block copied a second time starts a new copy (the next ``copy_ir`` call).

    The second copy ``inline_ir`` makes is of its own first copy (blocks whose scope is the copy made
    here), an "unmutated copy" that it returns as ``callee_ir_original`` and that its two callers in
    numba (``InlineInlinables``, ``InlineOverloads``) discard: that block is returned as it is, not
    copied (half the copying, 13 % of the clipper's first forward under cProfile).  Only the
    inliner's module sees this function (it is the only ``copy.deepcopy`` there); it changes no IR
    that numba keeps, only how many copies exist, so the compiled code is the same.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scope: object = None
        self._copy: object = None
        self._seen: set[int] = set()

    def __getattr__(self, name: str) -> object:  # the rest of the copy module, should numba use more of it
        return getattr(copy, name)

    def deepcopy(self, x: object, memo: dict | None = None) -> object:
        from numba.core import ir

        if memo is not None or not isinstance(x, ir.Block):
            return copy.deepcopy(x, memo)
        with self._lock:
            s = x.scope
            if s is self._copy:  # a block of the copy just made: inline_ir's discarded second copy
                return x
            if self._scope is not s or id(x) in self._seen:
                self._scope, self._copy, self._seen = s, copy.deepcopy(s, {}), set()
            self._seen.add(id(x))
            scope_copy = self._copy
        return copy.deepcopy(x, {id(s): scope_copy})


# the untyped IR of each inlined circuitsim function, by (function, flags.no_rewrites)
_UNTYPED: dict[tuple[object, bool], object] = {}


def _inline_function(self, caller_ir, block, i, function, arg_typs=None):  # noqa: ANN001, ANN202 (numba's)
    """``InlineWorker.inline_function`` that runs the untyped passes of a circuitsim function once per
    process instead of once per call site.

    numba translates the bytecode of an ``inline="always"`` callee and runs the whole untyped pipeline
    on it (its own inlining included, recursively) at every call site (``InlineWorker.run_untyped_passes``);
    the IR depends only on the function and on the flag that chooses passes (``no_rewrites``; numba runs
    them with ``enable_ssa`` False), so it is kept and each call site inlines a copy (``inline_ir`` copies what it is
    given before it changes anything).  Functions of other modules (numba's overloads), closures and
    callers with ``locals`` type annotations go through numba's own path.
    """
    key = (function, bool(self.flags.no_rewrites))
    if (not (getattr(function, "__module__", None) or "").startswith("circuitsim") or function.__code__.co_freevars
            or self.locals):
        return _NUMBA_INLINE_FUNCTION(self, caller_ir, block, i, function, arg_typs=arg_typs)
    callee_ir = _UNTYPED.get(key)
    if callee_ir is None:
        callee_ir = _UNTYPED[key] = self.run_untyped_passes(function)
    else:
        self.flags.enable_ssa = False  # run_untyped_passes' side effect on the caller's flags
    # inline_ir deep-copies the blocks (the same block objects each time: _BlockCopy tells copies apart by
    # them) and builds its own dict of them; the definitions are this call's own
    callee_ir = copy.copy(callee_ir)
    defs = callee_ir._definitions = copy.copy(callee_ir._definitions)
    for k in defs:
        defs[k] = list(defs[k])
    return self.inline_ir(caller_ir, block, i, callee_ir, function.__code__.co_freevars, arg_typs=arg_typs)


_NUMBA_INLINE_FUNCTION = None


def _bits(names: Iterable[str], index: dict[str, int], nbits: int) -> int:
    # the set `names` as an int whose bit index[name] is set
    on = [index[n] for n in names]
    if not on:
        return 0
    flags = np.zeros(nbits, dtype=bool)
    flags[on] = True
    return int.from_bytes(np.packbits(flags, bitorder="little").tobytes(), "little")


def live_map(cfg, blocks, var_use_map, var_def_map):  # noqa: ANN001, ANN201 (numba's)
    """``numba.core.analysis.compute_live_map`` (the variables alive at the entry of each block) with the
    variable sets as bit sets (Python ints): the same two fix points, reaching definitions forward and liveness
    backward, each iterated until nothing changes, so the same (least) fix point.

    numba's version unions Python sets of names, blocks x variables per pass, quadratic in the inlined code;
    it runs after every inlining and rewrite (``PostProcessor``, dead-code removal) and took a sixth of a
    first compile (the diode clipper's first forward + backward: 2.6 of 16.3 CPU seconds).  A bit set makes
    each union a few hundred machine words.  The result is the same dict of sets.
    """
    names = list(dict.fromkeys(n for m in (var_use_map, var_def_map) for s in m.values() for n in s))
    index = {n: i for i, n in enumerate(names)}
    nbits = len(names)
    use = {b: _bits(var_use_map[b], index, nbits) for b in blocks}
    defs = {b: _bits(var_def_map[b], index, nbits) for b in blocks}
    topo = cfg.topo_order()
    succ = {b: [s for s, _ in cfg.successors(b)] for b in topo}
    pred = {b: [s for s, _ in cfg.predecessors(b)] for b in topo}
    # the variables defined or used in a block from which this one is reachable
    reach: dict[object, int] = {}
    changed = True
    while changed:
        changed = False
        for b in topo:
            r = reach.get(b, 0) | defs[b] | use[b]
            if r != reach.get(b, 0):
                reach[b], changed = r, True
            for s in succ[b]:
                old = reach.get(s, 0)
                if old | r != old:
                    reach[s], changed = old | r, True
    live = dict(use)
    changed = True
    while changed:
        changed = False
        for b in reversed(topo):
            lv = live[b]
            for p in pred[b]:
                old = live[p]
                new = old | (lv & reach.get(p, 0) & ~defs[p])
                if new != old:
                    live[p], changed = new, True
    table = np.array(names + [""], dtype=object)
    nbytes = (nbits + 7) // 8
    out = {}
    for b in blocks:
        m = live[b]
        on = np.flatnonzero(np.unpackbits(np.frombuffer(m.to_bytes(nbytes, "little"), np.uint8), bitorder="little"))
        out[b] = set(table[on].tolist())
    return out


_NUMBA_LIVE_MAP = None


def install_inline_copy() -> None:
    """Give numba's inliner :class:`_BlockCopy` and :func:`_inline_function`, and its analysis :func:`live_map`
    (idempotent; called before a generated module compiles).

    Skipped, leaving numba as it is, where its inliner does not copy blocks that way
    (``numba.core.inline_closurecall`` without a module-level ``copy``), or where its ``compute_live_map``
    has another signature.
    """
    global _NUMBA_INLINE_FUNCTION, _NUMBA_LIVE_MAP
    from numba.core import analysis, inline_closurecall, ir_utils

    if _NUMBA_LIVE_MAP is None and analysis.compute_live_map.__code__.co_varnames[:4] == (
            "cfg", "blocks", "var_use_map", "var_def_map"):
        _NUMBA_LIVE_MAP = analysis.compute_live_map
        analysis.compute_live_map = live_map  # postproc calls it through the module, ir_utils by its own name
        if getattr(ir_utils, "compute_live_map", None) is _NUMBA_LIVE_MAP:
            ir_utils.compute_live_map = live_map
    if getattr(inline_closurecall, "copy", None) is copy:
        inline_closurecall.copy = _BlockCopy()
        worker = inline_closurecall.InlineWorker
        if _NUMBA_INLINE_FUNCTION is None and hasattr(worker, "run_untyped_passes"):
            _NUMBA_INLINE_FUNCTION = worker.inline_function
            worker.inline_function = _inline_function


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin and spec.origin.endswith(".py") else None


def source_dependencies(sources: Iterable[str]) -> list[Path]:
    """The files of every ``circuitsim`` module the ``sources`` import at top level, transitively.

    They enter the cache key of a generated module: numba's cache does not track callees, so a
    change in a device file must give a new module file.
    """
    seen: dict[Path, None] = {}
    todo = list(sources)
    while todo:
        for m in _IMPORT.finditer(todo.pop()):
            names = [m.group(3)] if m.group(3) else [m.group(1)] + [
                f"{m.group(1)}.{n.split()[0]}" for n in m.group(2).split("#")[0].strip("() \n").split(",") if n.split()
            ]
            for name in names:
                path = _module_file(name)
                if path is not None and path not in seen:
                    seen[path] = None
                    todo.append(path.read_text())
    return sorted(seen)


def _templates(module: ModuleType, names: Iterable[str], decorator: str) -> str:
    return "".join(f"\n\n{decorator}\n{_cold(n, inspect.getsource(getattr(module, n)))}" for n in names)


# The cold templates (the fallbacks, the start of a batch item) run a few times per item, not per
# sample: they call the formulation's evaluation through one shared non-inlined copy, so numba
# types and lowers the device equations once for all of them instead of once per call site
# (half the first compile of a BJT circuit went to newton_damped's two inlined copies).
# (backward_core keeps its inlined copy: calling fm_eval_cold there saved ~1-2 s of a first backward but
# cost 8-19 % of the backward's time per sample, DS-1 and clipper, benchmarks' A/B at load 5)
_COLD_TEMPLATES = ("newton_damped", "start_item")
_COLD_HOOKS = ("fm_eval",)
_COLD_CALL = re.compile(r"\b(" + "|".join(_COLD_HOOKS) + r")\(")


def _cold(name: str, source: str) -> str:
    return _COLD_CALL.sub(r"\1_cold(", source) if name in _COLD_TEMPLATES else source


_NL_EVAL = re.compile(r"\bnl_eval\(")


def _cold_wrappers(hooks: Iterable[object], shared_eval: bool) -> str:
    # fm_eval_cold: fm_eval, not inlined; with shared_eval, a copy of the formulation's fm_eval that calls the
    # nonlinearity module's nl_eval_cold (linked by step_module) for nl_eval, so the device equations it
    # evaluates are the ones the DC point compiled (a BJT circuit's first forward compiled them again here: 1.6 s)
    by_name = {h.__name__: h for h in hooks}
    out = []
    for name in _COLD_HOOKS:
        src = inspect.getsource(by_name[name]) if name in by_name else ""
        if shared_eval and _NL_EVAL.search(src):
            out.append("\n\n@njit(cache=True)\n" + _NL_EVAL.sub("nl_eval_cold(", src.replace(
                f"def {name}(", f"def {name}_cold(", 1)))
            continue
        args = ", ".join(inspect.signature(getattr(core, name)).parameters)
        out.append(f"\n\n@njit(cache=True)\ndef {name}_cold({args}):\n    return {name}({args})\n")
    return "".join(out)


# the adjoint's copies of fm_eval and fm_vjp (core.backward_core): with the nonlinearity's nl_eval_grad, which also
# writes the parameter VJP's local partials into the sample's work (the tape), and nl_vjp_saved, which reads them
# instead of evaluating the devices again.  Only where fm_eval calls nl_eval once and fm_vjp nl_vjp_theta once
# (both at the sample's port voltages, with the sample's work: DK and the formulations on its hooks); else the
# copies call the hooks as they are.
_GRAD_CALLS = (("fm_eval", re.compile(r"\bnl_eval\("), "nl_eval_grad("),
               ("fm_vjp", re.compile(r"\bnl_vjp_theta\("), "nl_vjp_saved("))


def _grad_hooks(hooks: Iterable[object]) -> str:
    by_name = {h.__name__: h for h in hooks}
    srcs = {name: inspect.getsource(by_name[name]) for name, _, _ in _GRAD_CALLS}
    taped = all(len(pat.findall(srcs[name])) == 1 for name, pat, _ in _GRAD_CALLS)
    out = []
    for name, pat, repl in _GRAD_CALLS:
        if taped:
            out.append(f"\n\n{_INLINE}\n" + pat.sub(repl, srcs[name].replace(f"def {name}(", f"def {name}_grad(", 1)))
        else:
            args = ", ".join(inspect.signature(getattr(core, name)).parameters)
            out.append(f"\n\n{_INLINE}\ndef {name}_grad({args}):\n    return {name}({args})\n")
    return "".join(out)


# The plain fm_vjp calls the nonlinearity's parameter VJP (nl_vjp_theta) as one compiled function instead of
# inlining it where its code has more than this many statements (its own and those of the functions of the
# source it calls, Python statements).  Measured before the adjoint was taped: a BJT's (288) inlined was a fifth
# of the DS-1 backward's first compile; the call costs ~4 ns a sample, 2 % of that backward
# (benchmarks/bench_kernel.py --netlists, A/B), but 7-10 % of a diode clipper's, whose VJP (30) stays inlined.
# DK's adjoint now reads the tape (nl_vjp_saved), so this serves the formulations whose hooks _grad_hooks wraps
# as they are
VJP_CALL_STATEMENTS = 100
_NL_VJP = re.compile(r"\bnl_vjp_theta\(")
_VJP_WRAPPER = ("\n\n@njit(cache=True)\ndef nl_vjp_theta_call(v, theta, mu, gtheta, work):\n"
                "    nl_vjp_theta(v, theta, mu, gtheta, work)\n")


def statements(source: str, name: str) -> int:
    """Python statements of the function ``name`` of ``source`` and of the functions of ``source`` it calls,
    transitively (each counted once): the size of what inlining ``name`` pastes in."""
    defs = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    seen: set[str] = set()
    todo, total = [name], 0
    while todo:
        f = todo.pop()
        if f in seen or f not in defs:
            continue
        seen.add(f)
        for node in ast.walk(defs[f]):
            total += isinstance(node, ast.stmt)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                todo.append(node.func.id)
    return total


# constants a formulation may leave out (docs/architecture.md, "Plugging a formulation into the core")
_DEFAULT_CONSTANTS = "FM_EXPLICIT = 0\nFM_LC = N_LC\n"


def formulation_source(step: StepFormulation, shared_eval: bool = False, call_vjp: bool = False) -> str:
    """The formulation's constants and hooks, each hook compiled ``inline="always"``.

    A formulation without ``fm_solve`` gets the core's default (never solves) and ``FM_EXPLICIT = 0``.
    ``shared_eval``: the module links the nonlinearity module's ``nl_eval_cold`` (:func:`step_module`),
    which the cold copy of ``fm_eval`` then calls.  ``call_vjp``: the hooks call ``nl_vjp_theta`` through a
    compiled function that is not inlined (``nl_vjp_theta_call``; :data:`VJP_CALL_STATEMENTS`).
    """
    names = {h.__name__ for h in step.hooks}
    hooks = (*step.hooks, *(h for h in (core.fm_solve,) if h.__name__ not in names))
    code = "".join(f"\n\n{_INLINE}\n{inspect.getsource(h)}" for h in hooks)
    if call_vjp:  # the plain fm_vjp only: the adjoint's taped copy (_grad_hooks) calls nl_vjp_saved
        code = _NL_VJP.sub("nl_vjp_theta_call(", code) + _VJP_WRAPPER
    code += _cold_wrappers(hooks, shared_eval) + _grad_hooks(hooks)
    return f"\n# ---- formulation {step.name}\n{_DEFAULT_CONSTANTS}{step.constants}\n{code}\n"


def core_source() -> str:
    """The linear algebra, the layout constants and the loops of the core."""
    consts = "\n".join(
        f"{k} = {v!r}" for k, v in vars(core).items() if k.startswith(core.LAYOUT_PREFIXES) and isinstance(v, int)
    )
    return (
        "\n# ---- linear algebra\n"
        + _templates(linalg, linalg.TEMPLATES, _INLINE)
        + f"\n\n# ---- core\n{consts}\n"
        + _templates(core, core.INLINE_TEMPLATES, _INLINE)
        + "".join(f"\n\n@njit(cache=True{opts})\n{_cold(n, inspect.getsource(getattr(core, n)))}"
                  for n, opts in core.TEMPLATES)
        + _forward_copies()
        + "\n"
    )


# core.forward_item twice, with its constant FALLBACKS as a literal: forward_item without the fallbacks
# (numba prunes the constant branch before typing, so a first forward that never needs them does not
# compile them) and forward_item_full with them (core.forward runs it where the first one stops)
FORWARD_COPIES = (("forward_item", 0), ("forward_item_full", 1))
_FALLBACKS = re.compile(r"\bFALLBACKS\b")


def _forward_copies() -> str:
    src = inspect.getsource(core.forward_item)
    return "".join(
        "\n\n@njit(cache=True, nogil=True)\n"
        + _FALLBACKS.sub(str(flag), src.replace("def forward_item(", f"def {name}(", 1))
        for name, flag in FORWARD_COPIES
    )


_HEADER = ("\nfrom circuitsim.kernels.linalg import borrow  # noqa: E402\n"
           "from circuitsim.kernels.nonlinearity import generated_module  # noqa: E402\n")


def step_module(nb_source: str, step: StepFormulation | None = None) -> ModuleType:
    """The generated module of a nonlinearity source and a formulation (default: DK).

    It exposes ``forward_item``, ``backward_item``, ``theta_vjp_item``, the nonlinearity's
    functions and the constants; use it through :func:`circuitsim.kernels.core.forward` and
    :func:`~circuitsim.kernels.core.backward`.
    """
    from circuitsim.kernels.nonlinearity import load_generated

    if step is None:
        from circuitsim.kernels.statespace import DK_STEP

        step = DK_STEP
    # the nonlinearity's own module (Nonlinearity.eval_batch's, the DC point's): its nl_eval_cold, compiled
    # once, serves this module's cold code too (formulation_source)
    shared = "\ndef nl_eval_cold(" in nb_source
    link = ""
    if shared:
        link = (f"\nnl_eval_cold = generated_module({load_generated(nb_source).__name__!r}).nl_eval_cold"
                "  # noqa: E402, F811\n")
    call_vjp = statements(nb_source, "nl_vjp_theta") > VJP_CALL_STATEMENTS
    source = nb_source + _HEADER + link + formulation_source(step, shared, call_vjp) + core_source()
    deps = source_dependencies([source]) + [Path(core.__file__), Path(linalg.__file__), *step.dependencies]
    module = load_generated(source, deps)
    _BUILDS.setdefault(module.__name__, (source, tuple(deps)))
    return module


# the source and dependencies of every module step_module built (by module name), and the sized modules made
# from them by sized_module (by name and sizes)
_BUILDS: dict[str, tuple[str, tuple[Path, ...]]] = {}
_SIZED: dict[tuple[str, int, int], ModuleType] = {}


def sized_module(module: ModuleType, nx: int, nu: int) -> ModuleType:
    """``module`` (from :func:`step_module`) with the linear sizes ``Nx``, ``Nu`` (states, inputs) as the
    compile-time constants ``NX``, ``NU``: its loops run only linear maps of those sizes, unrolled or
    vectorised by the compiler (``linalg.tmv3``).  The output count stays a run-time size: DK runs the
    last sample of a block with extra output rows (formulations/dk.py), and a second ``Ny`` would compile
    the whole core again (it doubled a first compile).  The unsized module keeps the
    nonlinearity's functions (``nl_eval`` ...); :func:`circuitsim.kernels.core.forward` and
    :func:`~circuitsim.kernels.core.backward` call this with the sizes of their maps.  A module that
    :func:`step_module` did not build (sized already, or an older kernel) is returned as it is.
    """
    key = (module.__name__, int(nx), int(nu))
    out = _SIZED.get(key)
    if out is not None:
        return out
    build = _BUILDS.get(module.__name__)
    if build is None:
        return module
    from circuitsim.kernels.nonlinearity import load_generated

    source, deps = build
    sizes = {k: v for k, v in vars(module).items() if k.isupper() and type(v) is int}
    sizes.update(NX=key[1], NU=key[2])
    source = choose_loop_orders(source, sizes)
    out = load_generated(f"{source}\n# ---- linear sizes\nNX = {key[1]}\nNU = {key[2]}\n", deps)
    _SIZED[key] = out
    return out


# the size arguments of linalg.tmv3 (n1, n2, n3, rows)
_TMV3_SIZES = (3, 6, 9, 10)


def choose_loop_orders(source: str, sizes: dict[str, int]) -> str:
    """``source`` with each call of ``linalg.tmv3`` whose four sizes are compile-time constants (names in
    ``sizes``, or literals) replaced by the call of the loop order ``tmv3`` takes for them (``tmv3_dots`` or
    ``tmv3_axpy``, by :func:`circuitsim.kernels.linalg.tmv3_takes_dots`).

    numba decides ``tmv3``'s size test only after typing (LLVM folds it), so it types and lowers both loop
    orders at every call site (a tenth of a generated module's code); the loops run are the same, so the
    outputs are bitwise the same.  Calls with a run-time size (``Ny``) keep ``tmv3``.
    """
    lines = source.splitlines(keepends=True)
    for ln, line in enumerate(lines):
        if "tmv3(" not in line:
            continue
        # parse the line alone (the whole module takes ~0.13 s, a tenth of a cached run's first call); a call
        # that does not parse alone (split over lines) keeps tmv3
        text = line.strip()
        indent = len(line.encode()) - len(line.lstrip().encode())
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        edits = []  # (start byte, end byte, name): the callee names to replace
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "tmv3"
                    and len(node.args) >= 11):
                continue
            try:
                n1, n2, n3, rows = (eval(compile(ast.Expression(node.args[i]), "<size>", "eval"),
                                         {"__builtins__": {}}, sizes) for i in _TMV3_SIZES)
            except (NameError, TypeError):  # a run-time size
                continue
            name = "tmv3_dots" if linalg.tmv3_takes_dots(rows, n1, n2, n3) else "tmv3_axpy"
            edits.append((indent + node.func.col_offset, indent + node.func.end_col_offset, name))
        raw = line.encode()
        for a, b, name in sorted(edits, reverse=True):  # col offsets are UTF-8 bytes
            raw = raw[:a] + name.encode() + raw[b:]
        lines[ln] = raw.decode()
    return "".join(lines)


def dk_module(nl: Nonlinearity) -> ModuleType:
    """The generated module of ``nl`` and the DK formulation, with the explicit diode root where ``nl``
    has the structure for it (:func:`circuitsim.kernels.statespace.dk_step`).

    It is kept as ``nl``'s module (``Nonlinearity.module``); a module already set there (built
    first through that property, or swapped in by a benchmark) is used as it is.
    """
    if nl._module is None:
        from circuitsim.kernels.statespace import dk_step

        nl._module = step_module(nl.nb_source, dk_step(nl))
    return nl._module


__all__ = [
    "choose_loop_orders", "core_source", "dk_module", "formulation_source", "install_inline_copy", "live_map",
    "sized_module", "source_dependencies", "statements", "step_module",
]
