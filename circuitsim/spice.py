"""ngspice as the reference simulator: transient runs driven by sampled audio, and DC operating points.

The netlist is run unchanged except for what the harness needs (docs/validation.md):

* the input source (``VIN``, an independent voltage source) is replaced by the XSPICE
  ``filesource`` code model used as a *differential* source, ``ACSIM_VIN %vd([n+ n-]) ...``,
  reading a ``time value`` text file with one line per sample ``t = k/fs``.  filesource
  interpolates linearly between samples and sets no breakpoints (a PWL source makes every
  sample a breakpoint and ngspice crawls).  At ``t = 0`` it gives the first sample, so the DC
  operating point ngspice computes before the transient is the one for ``input[0]``.
* analysis, output and control statements (``.tran .op .ac .control ... .endc .end`` ...)
  are removed and ``.options reltol abstol vntol`` + ``.save`` + ``.tran`` are appended;
* ``.param`` overrides rewrite the top-level assignment in place;
* ``.include`` / ``.lib`` paths are made absolute (the run happens in a temporary directory).

ngspice runs in batch mode in a subprocess (``ngspice -b -n -r out.raw``) and the binary raw
file is read back.  The shared-library interface through PySpice (``backend="pyspice"``) gives
the same numbers, but after some netlist errors libngspice stays unusable for the rest of the
process ("cannot recover and awaits to be detached"), so the subprocess is the default.

ngspice's time points are its own (variable step, at most TMAX apart; with XSPICE devices
present ngspice also lowers TRTOL to 1), so the output has to be interpolated to the sample
instants.  The input is linear between samples, so wherever the output follows the input
algebraically (the FMV tone stack's C1 path, a resistive divider) it has a kink at every
sample instant, which no interpolation across sample instants can resolve: at TMAX = 1/fs a
cubic spline through the raw points is off by up to (omega*h)^2/8 of such a component (ESR
~5e-7 at 5 kHz, ~1e-4 at 20 kHz at 384 kHz; 2e-7 on the FMV stack with a 1 V pluck), which
is not far below the 1e-8 the reference is meant for.  The defaults are therefore:

* ``tmax = 1/(4*fs)``: every sample interval holds at least four of ngspice's points;
* ``interpolation="piecewise"``: one cubic per sample interval through four well-spread raw
  points, evaluated at the interval's ends (exact for the kinks; where an interval has
  fewer points the cubic spline below is used).

``"cubic"`` (one spline through all raw points) is as good where the circuit smooths the
input (capacitor voltages: interpolation ESR ~1e-10 at TMAX = 1/fs), ``"linear"`` is
np.interp.  tests/test_spice.py measures all of this against analytic solutions.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from circuitsim.errors import CircuitsimError, UsageError
from circuitsim.netlist.parser import PSPICE_TC

__all__ = [
    "SpiceError",
    "ngspice_available",
    "operating_point_ngspice",
    "simulate_ngspice",
    "transient_ngspice",
]

# Statements removed before the harness appends its own analysis (first token, lower case).
_STRIP_KEYWORDS = frozenset(
    {
        ".tran", ".ac", ".dc", ".op", ".noise", ".tf", ".disto", ".pz", ".sens", ".four",
        ".fourier", ".meas", ".measure", ".print", ".plot", ".probe", ".save", ".width",
        ".end", ".sp", ".pss", ".backanno", ".step", ".wave",
    }
)  # the last three are LTspice's: ngspice 39 stops on them ("unimplemented control card")
_INSTANCE = "acsim_vin"  # XSPICE instances must start with 'a'
_MODEL = "csim_vin_src"
_PAD_SAMPLES = 2  # filesource sticks at its last value once it reads past the end of the file


class SpiceError(CircuitsimError, RuntimeError):
    """ngspice could not be run, failed on the netlist, or its results were unusable (one-line message)."""


# ---------------------------------------------------------------- availability


_available: bool | None = None


def _ngspice_executable() -> str | None:
    return shutil.which(os.environ.get("CIRCUITSIM_NGSPICE", "ngspice"))


def ngspice_available() -> bool:
    """True if ngspice can be run: the ``ngspice`` executable is on PATH, or libngspice loads via PySpice."""
    global _available
    if _available is None:
        if _ngspice_executable() is not None:
            _available = True
        else:
            try:
                _pyspice_instance()
                _available = True
            except Exception:  # noqa: BLE001 - any failure means "not available"
                _available = False
    return _available


# ---------------------------------------------------------------- netlist text handling


@dataclass
class _Stmt:
    """One logical SPICE statement: its physical lines (first + '+' continuations) and joined text."""

    lines: list[int]
    text: str
    depth: int  # .subckt nesting depth (0 = top level)
    control: bool = False  # inside .control ... .endc

    @property
    def keyword(self) -> str:
        return self.text.split(None, 1)[0].lower() if self.text else ""

    @property
    def tokens(self) -> list[str]:
        return self.text.split()


_INLINE_COMMENT = re.compile(r"(;|\s\$\s|\s\$$|//).*$")


def _strip_inline_comment(s: str) -> str:
    return _INLINE_COMMENT.sub("", s).rstrip()


@dataclass
class _Netlist:
    path: Path
    lines: list[str]
    stmts: list[_Stmt] = field(default_factory=list)
    end_line: int | None = None  # physical line of the top-level .end: ngspice ignores what follows

    dialect: str = "ngspice"
    words: frozenset[str] = frozenset()  # .param names anywhere (a model value that is one stays a word)
    undeclared: dict[str, list[str]] = field(default_factory=dict)  # SUBCKT -> names instances pass it

    @classmethod
    def read(cls, path: str | Path, dialect: str | None = None) -> _Netlist:
        """Read a netlist; outside the ngspice dialect its includes are inlined so they can be rewritten too."""
        from circuitsim.netlist.parser import read_text

        p = Path(path)
        try:
            text = read_text(str(p))  # UTF-16 (LTspice), UTF-8 or Latin-1, as the parser reads it
        except FileNotFoundError:
            raise SpiceError(f"{p}: netlist file not found") from None
        except OSError as e:
            raise SpiceError(f"{p}: cannot read netlist ({e})") from None
        facts = _dialect_facts(p, dialect)
        if facts[0] != "ngspice":
            text = "\n".join(_inline_includes(text.splitlines(), p, 0))
        nl = cls.parse(text, p)
        nl.dialect, nl.words, nl.undeclared = facts
        return nl

    @classmethod
    def parse(cls, text: str, path: Path) -> _Netlist:
        lines = text.splitlines()
        if not lines:
            raise SpiceError(f"{path}: netlist is empty")
        nl = cls(path, lines)
        depth = 0
        control = False
        cur: _Stmt | None = None
        for i in range(1, len(lines)):  # line 0 is the title, whatever it says
            s = lines[i].strip()
            if not s or s.startswith("*"):
                continue
            if s.startswith("+"):
                if cur is None:
                    raise SpiceError(f"{path}:{i + 1}: continuation line '+' without a statement before it")
                cur.lines.append(i)
                cur.text = (cur.text + " " + _strip_inline_comment(s[1:])).strip()
                continue
            cur = _Stmt([i], _strip_inline_comment(s), depth, control)
            kw = cur.keyword
            if kw == ".end" and not control:
                nl.end_line = i
                break
            nl.stmts.append(cur)
            if kw == ".control":
                control = True
                cur.control = True
            elif kw == ".endc":
                control = False
                cur.control = True
            elif not control and kw == ".subckt":
                depth += 1
            elif not control and kw == ".ends":
                depth = max(depth - 1, 0)
        return nl

    def render(self, replace: Mapping[int, str], append: Sequence[str]) -> str:
        """Text with statements replaced (index into ``stmts`` -> new text, '' deletes) and lines appended."""
        drop: set[int] = set()
        first: dict[int, str] = {}
        for k, new in replace.items():
            st = self.stmts[k]
            drop.update(st.lines)
            if new:
                first[st.lines[0]] = new
        out = []
        stop = len(self.lines) if self.end_line is None else self.end_line
        for i, line in enumerate(self.lines[:stop]):
            if i in first:
                out.append(first[i])
            elif i not in drop:
                out.append(line)
        out.extend(append)
        out.append(".end")
        return "\n".join(out) + "\n"


_PARAM_ASSIGN = re.compile(r"([A-Za-z_][\w.]*)\s*=\s*(\{[^{}]*\}|'[^']*'|\"[^\"]*\"|[^\s{}'\"=]+)")


def _fmt(x: float) -> str:
    return repr(float(x))


def _common_edits(nl: _Netlist, params: Mapping[str, float] | None) -> tuple[dict[int, str], list[str]]:
    """Strip analyses/control blocks, make include paths absolute, apply .param overrides.

    Returns the statement replacements and the lines to append (overrides of parameters that
    may live in an included file: in ngspice a later ``.param`` definition wins).
    """
    replace: dict[int, str] = {}
    has_include = False
    overrides = {k.lower(): float(v) for k, v in (params or {}).items()}
    for name, v in overrides.items():
        if not np.isfinite(v):
            raise SpiceError(f"{nl.path}: .param override {name}={v} is not a finite number")
    found: set[str] = set()
    top_params: list[str] = []
    base = nl.path.resolve().parent
    for k, st in enumerate(nl.stmts):
        kw = st.keyword
        if st.control or kw in _STRIP_KEYWORDS:
            replace[k] = ""
        elif kw in (".include", ".inc", ".lib"):
            toks = st.text.split(None, 2)
            if len(toks) >= 2:
                from circuitsim.netlist.parser import library_path

                raw = toks[1].strip("'\"")
                near = library_path(str(nl.path), raw)  # LTspice's own library folders: the file next to it
                cand = Path(near).resolve() if near is not None else Path(raw) if os.path.isabs(raw) else base / raw
                from circuitsim.netlist.parser import ltspice_standard_library

                if kw == ".lib" and len(toks) == 2 and near is None and ltspice_standard_library(raw):
                    replace[k] = ""  # LTspice's own library, absent here: the parser skipped it too
                elif kw != ".lib" or len(toks) == 3 or cand.is_file():
                    has_include = True
                    rest = (" " + toks[2]) if len(toks) == 3 else ""
                    replace[k] = f'{toks[0]} "{cand}"{rest}'
        elif kw == ".param" and st.depth == 0:
            top_params += [m.group(1).lower() for m in _PARAM_ASSIGN.finditer(st.text)]

            def _override(m: re.Match[str]) -> str:
                name = m.group(1).lower()
                if name not in overrides:
                    return m.group(0)
                found.add(name)
                return f"{m.group(1)}={_fmt(overrides[name])}"

            new_text = _PARAM_ASSIGN.sub(_override, st.text)  # only the overridden values change
            if new_text != st.text:
                replace[k] = new_text
        elif (new := _dialect_rewrite(nl, st)) is not None:
            replace[k] = new
    missing = sorted(set(overrides) - found)
    if missing and not has_include:
        known = ", ".join(top_params) or "none"
        raise SpiceError(
            f"{nl.path}: no top-level .param named {', '.join(missing)} (top-level .params: {known})"
        )
    return replace, [f".param {m}={_fmt(overrides[m])}" for m in missing]


def _dialect_facts(path: Path, dialect: str | None) -> tuple[str, frozenset[str], dict[str, list[str]]]:
    """What the harness needs to rewrite ngspice's copy: the dialect (given, or detected by the
    parser), the .param names, and per subcircuit the parameters instances pass without a declaration."""
    import warnings

    from circuitsim.netlist import NetlistError, parse_file
    from circuitsim.netlist.ast import Scope, Subckt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = parse_file(path, dialect)
    except NetlistError:  # ngspice reports its own error on the unchanged text
        return dialect or "ngspice", frozenset(), {}
    words: set[str] = set()
    undeclared: dict[str, list[str]] = {}

    def walk(scope: Scope, chain: list[Scope]) -> None:
        words.update(p.name for p in scope.params)
        if isinstance(scope, Subckt):
            words.update(scope.defaults)
        for el in scope.elements:
            sub = next((s.subckts[el.model] for s in [scope, *chain] if el.kind == "X" and el.model in s.subckts), None)
            if sub is not None:
                for key in el.params:
                    if key not in sub.defaults and key not in undeclared.setdefault(sub.name, []):
                        undeclared[sub.name].append(key)
        for sub in scope.subckts.values():
            walk(sub, [scope, *chain])

    walk(net, [])
    return net.dialect, frozenset(words), {k: v for k, v in undeclared.items() if v}


def _inline_includes(lines: list[str], path: Path, depth: int) -> list[str]:
    """``.include``/``.lib`` lines replaced by the text they name (sections of ``.lib FILE SECTION`` only)."""
    from circuitsim.netlist.parser import library_path, read_text

    def words(line: str, n: int) -> list[str]:
        return [w.lower() for w in line.split()[:n]]

    out: list[str] = []
    for line in lines:
        toks = line.split()
        kw = toks[0].lower() if toks else ""
        found = None
        if kw in (".include", ".inc", ".lib") and 1 < len(toks) <= (3 if kw == ".lib" else 2) and depth < 20:
            found = library_path(str(path), toks[1].strip("'\""))
        if found is None:
            out.append(line)
            continue
        body = read_text(found).splitlines()
        if len(toks) == 3:  # .lib FILE SECTION: only the section
            heads = [i for i, b in enumerate(body) if words(b, 2) == [".lib", toks[2].lower()]]
            if not heads:
                out.append(line)
                continue
            ends = [i for i, b in enumerate(body) if i > heads[0] and words(b, 1) == [".endl"]]
            body = body[heads[0] + 1 : ends[0] if ends else len(body)]
        out.append(f"* {line.strip()}")
        out.extend(_inline_includes([b for b in body if words(b, 1) != [".end"]], Path(found), depth + 1))
    return out


_POWER_CALL = re.compile(r"\b(pwrs|pwr)(\s*\()", re.IGNORECASE)
_MODEL_WORD = re.compile(r"(\b[A-Za-z_]\w*\s*=\s*)([A-Za-z_][\w.-]*)(?=[\s,)]|$)")


def _dialect_rewrite(nl: _Netlist, st: _Stmt) -> str | None:
    """ngspice's copy of an LTspice/PSpice statement (None: unchanged).

    - ``pwr(x, y)`` is |x|^y there, ngspice's ``pow``; their ``pwrs`` is ngspice's signed ``pwr``;
    - a ``.subckt`` gets a ``params:`` declaration of what its instances pass (default 1);
    - a word value in a ``.model`` card (``mfg=OnSemi``) is quoted: ngspice 39 then ignores it;
    - a ``wavefile=`` source is 0 V (as the input, the transient replaces it by the audio);
    - PSpice's ``TC=a[,b]`` on R, C, L is ``tc1=a tc2=b`` (ngspice reads that spelling outside its PSpice mode).
    """
    if nl.dialect == "ngspice":
        return None
    text, kw = st.text, st.keyword
    if kw[:1] in ("b", "e", "g") or kw == ".func":
        new = _POWER_CALL.sub(lambda m: ("pwr" if m.group(1).lower() == "pwrs" else "pow") + m.group(2), text)
    elif kw == ".subckt" and len(st.tokens) > 1 and st.tokens[1].upper() in nl.undeclared:
        extra = " ".join(f"{k}=1" for k in nl.undeclared[st.tokens[1].upper()])
        new = text + (" " if re.search(r"\bparams:", text, re.IGNORECASE) else " params: ") + extra
    elif kw[:1] == "v" and re.search(r"\bwavefile\s*=", text, re.IGNORECASE) and len(st.tokens) >= 3:
        new = f"{st.tokens[0]} {st.tokens[1]} {st.tokens[2]} DC 0"  # the input: replaced for a transient
    elif kw[:1] in ("r", "c", "l") and PSPICE_TC.search(text):
        new = PSPICE_TC.sub(lambda m: f"tc1={m[1]}" + (f" tc2={m[3]}" if m[3] else ""), text)
    elif kw == ".model":
        new = _MODEL_WORD.sub(
            lambda m: m.group(0) if m.group(2).lower() in nl.words else f'{m.group(1)}"{m.group(2)}"', text
        )
    else:
        return None
    return new if new != text else None


def _ground(node: str) -> str:
    """``0`` for every spelling of ground (``gnd``, ``GND``), else the node as written."""
    return "0" if node.lower() in ("0", "gnd") else node


def _options_line(reltol: float, abstol: float, vntol: float) -> str:
    return f".options reltol={_fmt(reltol)} abstol={_fmt(abstol)} vntol={_fmt(vntol)}"


def _save_vector(output: str) -> str:
    o = output.strip()
    return o.lower() if "(" in o else f"v({o.lower()})"


def _build_transient(
    nl: _Netlist,
    input_source: str,
    data_file: Path,
    n: int,
    fs: float,
    tmax: float,
    output: str,
    params: Mapping[str, float] | None,
    tols: tuple[float, float, float],
) -> str:
    replace, extra = _common_edits(nl, params)
    src = input_source.lower()
    idx = [k for k, st in enumerate(nl.stmts) if st.depth == 0 and not st.control and st.keyword == src]
    if not idx:
        raise SpiceError(
            f"{nl.path}: no top-level voltage source named '{input_source}' to drive with the input"
        )
    k = idx[0]
    st = nl.stmts[k]
    if not src.startswith("v"):
        raise SpiceError(
            f"{nl.path}:{st.lines[0] + 1}: input source '{input_source}' is not a voltage source"
        )
    toks = st.tokens
    if len(toks) < 3:
        raise SpiceError(f"{nl.path}:{st.lines[0] + 1}: voltage source '{input_source}' needs two nodes")
    npos, nneg = _ground(toks[1]), _ground(toks[2])  # XSPICE port lists do not read 'gnd' as node 0
    word = re.compile(rf"(?<![\w.#]){re.escape(src)}(?![\w.#])", re.IGNORECASE)
    referenced = any(
        j != k and not o.control and o.keyword not in _STRIP_KEYWORDS and word.search(o.text)
        for j, o in enumerate(nl.stmts)
    )
    if referenced:
        # something uses the source's current (F/H source, i(vin) in a B source): keep it as a
        # 0 V source in series with the file source so its branch current still exists
        mid = "csim_vin_mid"
        replace[k] = f"{toks[0]} {npos} {mid} DC 0\n{_INSTANCE} %vd([{mid} {nneg}]) {_MODEL}"
    else:
        replace[k] = f"{_INSTANCE} %vd([{npos} {nneg}]) {_MODEL}"
    tend = (n - 1) / fs
    append = extra + [
        f'.model {_MODEL} filesource (file="{data_file}" amploffset=[0] amplscale=[1] timeoffset=0 '
        "timescale=1 timerelative=false amplstep=false)",
        _options_line(*tols),
        f".save {_save_vector(output)}",
        f".tran {_fmt(1.0 / fs)} {_fmt(tend)} 0 {_fmt(tmax)}",
    ]
    return nl.render(replace, append)


def _build_op(nl: _Netlist, params: Mapping[str, float] | None, tols: tuple[float, float, float]) -> str:
    replace, extra = _common_edits(nl, params)
    return nl.render(replace, extra + [_options_line(*tols), ".op"])


# ---------------------------------------------------------------- raw files


def _read_raw(path: Path) -> list[tuple[str, list[str], np.ndarray]]:
    """Plots in an ngspice raw file (binary or ascii, real data): (plot name, vector names, points x vars)."""
    data = path.read_bytes()
    plots = []
    pos = 0
    while pos < len(data):
        hdr: dict[str, str] = {}
        names: list[str] = []
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                raise SpiceError(f"{path}: truncated raw file header")
            line = data[pos:end].decode("latin-1")
            pos = end + 1
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "Variables":
                for _ in range(int(hdr["No. Variables"])):
                    end = data.index(b"\n", pos)
                    parts = data[pos:end].decode("latin-1").split()
                    pos = end + 1
                    names.append(parts[1].lower())
                continue
            if key in ("Binary", "Values"):
                break
            hdr[key] = val.strip()
        nv, npts = int(hdr["No. Variables"]), int(hdr["No. Points"])
        if "complex" in hdr.get("Flags", "").lower():
            raise SpiceError(f"{path}: complex raw data is not supported")
        if key == "Binary":
            arr = np.frombuffer(data, dtype="<f8", count=nv * npts, offset=pos).reshape(npts, nv).copy()
            pos += 8 * nv * npts
        else:
            toks = data[pos:].split()
            vals = np.array([float(t) for t in toks[: npts * (nv + 1)]]).reshape(npts, nv + 1)
            arr = vals[:, 1:]
            pos = len(data)
        plots.append((hdr.get("Plotname", ""), names, arr))
        while pos < len(data) and data[pos : pos + 1] in (b"\n", b"\r"):
            pos += 1
    return plots


# ---------------------------------------------------------------- running ngspice


def _first_error(text: str) -> str:
    """The most informative line of ngspice's output (line numbers there refer to the edited netlist)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        # "Error on line N or its substitute:" is followed by the statement and the reason
        if ln.lower().startswith("error on line") and i + 1 < len(lines):
            reason = lines[i + 2] if i + 2 < len(lines) else "error"
            return f"{reason} in '{lines[i + 1]}'"
    for pat in (
        r"undefined parameter", r"could not find", r"unknown", r"no such", r"singular matrix",
        r"timestep too small", r"\berror\b", r"aborted", r"not parsed", r"cannot",
    ):
        for ln in lines:
            if re.search(pat, ln, re.IGNORECASE):
                return ln
    return lines[-1] if lines else "no output"


def _run_subprocess(cir: Path, raw: Path, timeout: float | None) -> str:
    exe = _ngspice_executable()
    if exe is None:
        raise SpiceError("ngspice executable not found on PATH (install it, e.g. apt-get install ngspice)")
    try:
        proc = subprocess.run(
            [exe, "-b", "-n", "-r", str(raw), str(cir)],
            cwd=cir.parent,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise SpiceError(f"ngspice did not finish within {timeout} s") from None
    log = proc.stdout + "\n" + proc.stderr
    if proc.returncode != 0 or not raw.is_file():
        msg = _first_error(proc.stderr + proc.stdout)
        raise SpiceError(f"ngspice failed (exit {proc.returncode}): {msg}")
    return log


_pyspice_lock = threading.Lock()
_pyspice_dead: str | None = None


def _pyspice_instance():
    """The process-wide PySpice NgSpiceShared instance ('Unsupported Ngspice version' warning silenced)."""
    from PySpice.Spice.NgSpice.Shared import NgSpiceShared

    logger = logging.getLogger("PySpice.Spice.NgSpice.Shared")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return NgSpiceShared.new_instance()
    finally:
        logger.setLevel(old)


def _run_pyspice(text: str) -> tuple[list[str], np.ndarray, str]:
    """Run a netlist in libngspice (PySpice): (vector names, points x vars, log) of the last plot."""
    global _pyspice_dead
    with _pyspice_lock:
        if _pyspice_dead is not None:
            raise SpiceError(f"libngspice is unusable in this process after an error ({_pyspice_dead})")
        logger = logging.getLogger("PySpice")
        old = logger.level
        logger.setLevel(logging.CRITICAL)  # PySpice logs every stderr line of ngspice as an error
        try:
            ng = _pyspice_instance()
            lib = ng._ngspice_shared
            ng.clear_output()
            lines = [ln for ln in text.splitlines() if ln.strip()]
            from PySpice.Spice.NgSpice.Shared import FFI, ffi

            keep = [ffi.new("char[]", ln.encode("utf8")) for ln in lines] + [FFI.NULL]
            rc = lib.ngSpice_Circ(ffi.new("char *[]", keep))
            log = ng.stdout + "\n" + ng.stderr
            if rc or "circuit not parsed" in log.lower() or re.search(r"\berror\b", log, re.IGNORECASE):
                if "cannot recover" in log:
                    _pyspice_dead = _first_error(log)
                raise SpiceError(f"ngspice (shared) rejected the netlist: {_first_error(log)}")
            ng.clear_output()
            rc = lib.ngSpice_Command(b"run")
            log = ng.stdout + "\n" + ng.stderr
            if rc or re.search(r"\berror\b|aborted", log, re.IGNORECASE):
                if "cannot recover" in log:
                    _pyspice_dead = _first_error(log)
                raise SpiceError(f"ngspice (shared) failed: {_first_error(log)}")
            plot_name = ng.last_plot
            plot = ng.plot(None, plot_name)
            # the shared library names node vectors without v(...): use the raw-file spelling
            names = [_raw_name(str(n).lower()) for n in plot]
            cols = [np.asarray(plot[n]._data, dtype=np.float64) for n in plot]
            arr = np.stack(cols, axis=1) if cols else np.zeros((0, 0))
            return names, arr, log
        finally:
            try:
                ng = _pyspice_instance()
                ng._ngspice_shared.ngSpice_Command(b"destroy all")
                ng._ngspice_shared.ngSpice_Command(b"remcirc")
            except Exception:  # noqa: BLE001 - cleanup must not mask the real error
                pass
            logger.setLevel(old)


def _raw_name(name: str) -> str:
    if name == "time" or "(" in name or "#" in name or name.startswith("@"):
        return name
    return f"v({name})"


def _resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "subprocess" if _ngspice_executable() is not None else "pyspice"
    if backend not in ("subprocess", "pyspice"):
        raise UsageError(f"unknown ngspice backend '{backend}' (use 'auto', 'subprocess' or 'pyspice')")
    return backend


def _run(
    text: str, workdir: Path, backend: str, timeout: float | None, netlist: Path
) -> tuple[list[str], np.ndarray, str]:
    """Run the edited netlist; errors are prefixed with the original netlist's path."""
    try:
        if backend == "pyspice":
            return _run_pyspice(text)
        cir = workdir / "circuit.cir"
        raw = workdir / "out.raw"
        cir.write_text(text)
        log = _run_subprocess(cir, raw, timeout)
        plots = _read_raw(raw)
        if not plots:
            raise SpiceError(f"ngspice wrote no results: {_first_error(log)}")
        _, names, arr = plots[-1]
        return names, arr, log
    except SpiceError as e:
        raise SpiceError(f"{netlist}: {e}") from None


def _write_input_file(path: Path, x: np.ndarray, fs: float) -> None:
    n = len(x)
    t = np.arange(n + _PAD_SAMPLES, dtype=np.float64) / fs
    v = np.concatenate([x, np.full(_PAD_SAMPLES, x[-1])])
    with open(path, "w") as fh:
        np.savetxt(fh, np.column_stack([t, v]), fmt="%.17g")


# ---------------------------------------------------------------- public API


def transient_ngspice(
    netlist_path: str | Path,
    input_volts: np.ndarray,
    sample_rate: float,
    input_source: str = "VIN",
    output_node: str = "out",
    *,
    tmax: float | None = None,
    reltol: float = 1e-6,
    abstol: float = 1e-15,
    vntol: float = 1e-9,
    params: Mapping[str, float] | None = None,
    backend: str = "auto",
    timeout: float | None = None,
    dialect: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """ngspice's own transient time points (seconds) and the output node's voltage (volts) there.

    Same arguments as :func:`simulate_ngspice`; no interpolation is done.  The run covers
    ``0 <= t <= (len(input_volts) - 1) / sample_rate`` (at least one sample period), with
    ``tmax`` defaulting to a quarter sample period.
    """
    x = np.asarray(input_volts, dtype=np.float64)
    if x.ndim != 1:
        raise UsageError(f"input_volts must be one-dimensional, got shape {x.shape}")
    if len(x) == 0:
        raise UsageError("input_volts is empty")
    if not np.all(np.isfinite(x)):
        raise UsageError("input_volts contains NaN or infinite values")
    fs = float(sample_rate)
    if not (np.isfinite(fs) and fs > 0):
        raise UsageError(f"sample_rate must be a positive number of hertz, got {sample_rate}")
    if len(x) == 1:
        x = np.concatenate([x, x])  # ngspice needs tstop > 0
    h = 1.0 / fs
    tmax = h / 4 if tmax is None else float(tmax)
    if not tmax > 0:
        raise UsageError(f"tmax must be positive, got {tmax}")
    nl = _Netlist.read(netlist_path, dialect)
    be = _resolve_backend(backend)
    with tempfile.TemporaryDirectory(prefix="circuitsim_ngspice_") as tmp:
        work = Path(tmp)
        data = work / "input.txt"
        _write_input_file(data, x, fs)
        text = _build_transient(
            nl, input_source, data, len(x), fs, tmax, output_node, params, (reltol, abstol, vntol)
        )
        try:
            names, arr, log = _run(text, work, be, timeout, nl.path)
        except SpiceError as e:
            if "no data saved" in str(e):  # .save named nothing that exists
                msg = f"{nl.path}: output node '{output_node}' is not a node of the circuit"
                raise SpiceError(msg) from None
            raise
    want = _save_vector(output_node)
    if "time" not in names or want not in names:
        raise SpiceError(
            f"{nl.path}: ngspice produced no '{want}' (is '{output_node}' a node of the circuit?)"
        )
    t = arr[:, names.index("time")]
    y = arr[:, names.index(want)]
    tend = (len(x) - 1) * h
    if len(t) < 2 or t[-1] < tend * (1 - 1e-9):
        t_last = t[-1] if len(t) else 0.0
        raise SpiceError(
            f"{nl.path}: ngspice stopped the transient at t={t_last:.6g} s of {tend:.6g} s: "
            f"{_first_error(log)}"
        )
    if not np.all(np.isfinite(y)):
        raise SpiceError(f"{nl.path}: ngspice returned non-finite values for {want}")
    return t, y


def simulate_ngspice(
    netlist_path: str | Path,
    input_volts: np.ndarray,
    sample_rate: float,
    input_source: str = "VIN",
    output_node: str = "out",
    *,
    tmax: float | None = None,
    reltol: float = 1e-6,
    abstol: float = 1e-15,
    vntol: float = 1e-9,
    params: Mapping[str, float] | None = None,
    interpolation: str = "piecewise",
    backend: str = "auto",
    timeout: float | None = None,
    dialect: str | None = None,
) -> np.ndarray:
    """Drive ``input_source`` with ``input_volts`` (volts at ``t = k/sample_rate``) and return the output.

    Returns the voltage (volts) at ``output_node`` at the same instants, one value per input
    sample.  ngspice first computes the DC operating point with the input at
    ``input_volts[0]``, then integrates with steps <= ``tmax`` seconds (default a quarter
    sample period) under ``.options reltol abstol vntol`` (defaults tighter than ngspice's: its own
    defaults are not a reference, see docs/validation.md).  ``params`` overrides top-level
    ``.param`` values (names case-insensitive).

    ``interpolation`` maps ngspice's time points to the sample instants: "piecewise" (one
    cubic per sample interval, default: exact where the output follows the linearly
    interpolated input; needs ``tmax <= 1/(4*sample_rate)`` to be used everywhere), "cubic"
    (spline through all points) or "linear" (see the module docstring for their accuracy).
    ``backend`` is "subprocess" (the ngspice executable), "pyspice" (libngspice through
    PySpice) or "auto" (the executable if found).
    ``timeout`` (seconds) bounds a subprocess run.  ``dialect`` ('ngspice', 'ltspice', 'pspice'; None
    detects it as the parser does) decides how ngspice's copy is rewritten (pwr/pwrs, undeclared
    subcircuit parameters, word values in model cards); docs/netlists.md.
    """
    if interpolation not in ("cubic", "linear", "piecewise"):
        raise UsageError(f"interpolation must be 'cubic', 'linear' or 'piecewise', got '{interpolation}'")
    x = np.asarray(input_volts, dtype=np.float64)
    if x.ndim == 1 and len(x) == 0:
        return np.zeros(0)
    t, y = transient_ngspice(
        netlist_path, x, sample_rate, input_source, output_node, tmax=tmax, reltol=reltol,
        abstol=abstol, vntol=vntol, params=params, backend=backend, timeout=timeout, dialect=dialect,
    )
    return _to_samples(t, y, float(sample_rate), len(x), interpolation)


def _to_samples(t: np.ndarray, y: np.ndarray, fs: float, n: int, how: str) -> np.ndarray:
    """Interpolate ngspice's points (t, y) to the instants k/fs, k = 0..n-1."""
    ts = np.arange(n, dtype=np.float64) / fs
    # ngspice's time points are strictly increasing; drop any exact repeats defensively
    keep = np.concatenate([np.diff(t) > 0, [True]])
    t, y = t[keep], y[keep]
    if how == "linear" or len(t) < 4:
        return np.interp(ts, t, y)
    from scipy.interpolate import CubicSpline

    spline = CubicSpline(t, y)(ts)
    if how == "cubic":
        return spline
    pw = _piecewise_at_samples(t, y, fs, n)
    return np.where(np.isfinite(pw), pw, spline)


def _piecewise_at_samples(t: np.ndarray, y: np.ndarray, fs: float, n: int, nodes: int = 4) -> np.ndarray:
    """One polynomial per sample interval [k/fs, (k+1)/fs], evaluated at both ends (NaN where impossible).

    filesource's input is linear between samples, so the response is smooth inside each
    interval but may have a kink at every sample instant (where the output follows the input
    algebraically).  Inside interval k, take the raw points nearest to ``nodes`` equally
    spaced targets; if they are ``nodes`` distinct points, pass the Lagrange polynomial
    through them and evaluate it at the interval's ends.  Each sample instant averages the
    estimates of its two intervals.  TMAX <= 1/(4 fs) gives four points in every interval,
    each within 1/8 of the interval from its target, hence well spread.
    """
    h = 1.0 / fs
    ts = np.arange(n) * h
    eps = 1e-9 * h
    lo = np.searchsorted(t, ts[:-1] - eps, "left")
    hi = np.searchsorted(t, ts[1:] + eps, "right")  # exclusive end of each interval's points
    last = len(t) - 1
    targets = ts[:-1, None] + h * np.linspace(0.0, 1.0, nodes)[None, :]
    top = np.maximum(hi - 1, lo)[:, None]
    idx = np.clip(np.searchsorted(t, targets), lo[:, None], top)
    prev = np.clip(idx - 1, lo[:, None], top)
    idx = np.where(np.abs(t[prev] - targets) < np.abs(t[idx] - targets), prev, idx)
    idx = np.minimum(idx, last)
    ok = np.broadcast_to((hi > lo)[:, None], idx.shape).copy()
    ok[:, 1:] &= idx[:, 1:] != idx[:, :-1]
    sl = (t[idx] - ts[:-1, None]) / h  # local coordinate in [0, 1]
    yy = y[idx]
    # fewer points: a lower-order fit would be worse than the spline; nodes closer than 1/20 of
    # the interval: an ill-conditioned extrapolation (never happens with TMAX <= h/4)
    enough = ok.sum(axis=1) == nodes
    enough &= np.all(np.diff(sl, axis=1) > 0.05, axis=1)
    ends = []
    for x_eval in (0.0, 1.0):
        acc = np.zeros(n - 1)
        for i in range(nodes):
            basis = np.ones(n - 1)
            for j in range(nodes):
                if j != i:
                    d = np.where(ok[:, j] & ok[:, i], sl[:, i] - sl[:, j], 1.0)
                    basis *= np.where(ok[:, j] & ok[:, i], (x_eval - sl[:, j]) / d, 1.0)
            acc += np.where(ok[:, i], basis * yy[:, i], 0.0)
        ends.append(np.where(enough, acc, np.nan))
    left = np.concatenate([ends[0], [np.nan]])  # estimate of y(t_k) from interval k
    right = np.concatenate([[np.nan], ends[1]])  # ... from interval k-1
    both = np.stack([left, right])
    cnt = np.isfinite(both).sum(axis=0)
    total = np.where(np.isfinite(both), both, 0.0).sum(axis=0)
    return np.where(cnt > 0, total / np.maximum(cnt, 1), np.nan)


def operating_point_ngspice(
    netlist_path: str | Path,
    params: Mapping[str, float] | None = None,
    *,
    reltol: float = 1e-6,
    abstol: float = 1e-15,
    vntol: float = 1e-9,
    backend: str = "auto",
    timeout: float | None = None,
    dialect: str | None = None,
) -> dict[str, float]:
    """ngspice's DC operating point (``.op``) with the netlist's own source values.

    Returns node voltages (volts) keyed by lower-case node name as ngspice prints them
    (``"out"``, ``"xv1.e1"``), and currents (amperes) of voltage sources and other branch
    elements keyed ``"i(name)"`` (``"i(vcc)"``; ngspice's sign: current into the + node).
    """
    nl = _Netlist.read(netlist_path, dialect)
    be = _resolve_backend(backend)
    text = _build_op(nl, params, (reltol, abstol, vntol))
    with tempfile.TemporaryDirectory(prefix="circuitsim_ngspice_") as tmp:
        names, arr, log = _run(text, Path(tmp), be, timeout, nl.path)
    if arr.shape[0] < 1:
        raise SpiceError(f"{nl.path}: ngspice returned no operating point: {_first_error(log)}")
    out: dict[str, float] = {}
    for name, val in zip(names, arr[0]):
        if name.startswith("v(") and name.endswith(")"):
            key = name[2:-1]
        elif name.endswith("#branch"):
            key = f"i({name[: -len('#branch')]})"
        else:
            key = name
        out[key] = float(val)
    return out
