"""Statements -> :class:`~circuitsim.netlist.ast.Netlist`.

Three passes: (1) read the files, expanding ``.include``/``.lib`` in place (paths relative
to the including file); (2) collect ``.func`` definitions; (3) parse every statement into
the current scope (top level or the innermost ``.subckt``).  A final check resolves
subcircuit and model references, orders ``.param`` definitions by their dependencies (as
ngspice does) and reports undefined top-level parameters.

Syntax follows the ngspice manual (chapters 2-5 and 13) with the LTspice/PSpice spellings
that appear in pasted netlists (``µ``, ``VALUE={}``, ``PWRS``, ``SINE``, ``Rser=``).
Anything the parser does not understand is an error naming the file and line: nothing is
silently dropped.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

from circuitsim.netlist.ast import (
    Binary,
    BranchI,
    Call,
    Control,
    Element,
    Expr,
    Loc,
    Model,
    Name,
    Netlist,
    NodeV,
    Num,
    ParamDef,
    Scope,
    SourceSpec,
    Subckt,
)
from circuitsim.netlist.errors import DialectNote, NetlistError, NetlistWarning
from circuitsim.netlist.expr import (
    CONDITIONAL_FUNCTIONS,
    CONSTANTS,
    FUNCTIONS,
    free_names,
    normalise_node,
    parse_expr_in,
    substitute,
    walk,
)
from circuitsim.netlist.lexer import Cursor, Statement, Token, first_word, lex, split_lines
from circuitsim.netlist.units import looks_numeric, number_problem, parse_number, signed_tail

SUPPORTED_ELEMENTS = "RCLVIEGBDQXFHAJM"
UNSUPPORTED_ELEMENTS = {
    "K": "coupled (mutual) inductor",
    "N": "Verilog-A/OSDI device",
    "O": "lossy transmission line",
    "P": "coupled multiconductor line",
    "S": "voltage-controlled switch",
    "T": "lossless transmission line",
    "U": "uniform distributed RC line",
    "W": "current-controlled switch",
    "Y": "single lossy transmission line",
    "Z": "MESFET",
}
MODEL_TYPES = ("D", "NPN", "PNP", "NJF", "PJF", "NMOS", "PMOS", "POTENTIOMETER")
#: netlist dialects: what ``pwr()`` means, whether a subcircuit takes undeclared parameters, ``wavefile=``
DIALECTS = ("ngspice", "ltspice", "pspice")
#: text that only LTspice writes (first match decides; ngspice has no pwrs() and rejects the other two)
_LTSPICE_MARKERS = (
    (re.compile(r"^\.backanno\b", re.IGNORECASE), "'.backanno'"),
    (re.compile(r"\bwavefile\s*=", re.IGNORECASE), "'wavefile='"),
    (re.compile(r"\bpwrs\s*\(", re.IGNORECASE), "the function pwrs()"),
)
#: PSpice's temperature coefficients on R, C, L, 'TC=a[,b]' = 'tc1=a tc2=b' (groups: a, the gap, b).  ngspice 39
#: reads 'TC=a b' and 'TC=a, b' so on R alone and rejects 'TC=a,b', 'TC=a ,b' ("unknown parameter (b)") and TC on
#: C, L ("unknown parameter (tc)"); its PSpice mode (ngbehavior=ps for included files, psa for all) reads every one
#: as tc1, tc2 (checked against the binary: tests/test_parser.py)
PSPICE_TC = re.compile(
    r"(?<![\w.])TC\s*=\s*(\{[^{}]*\}|[^\s,=(){}]+)(?:(\s*,\s*|\s+)(\{[^{}]*\}|[^\s,=(){}]+)(?![\w.]*\s*=))?",
    re.IGNORECASE,
)
_NGSPICE_TC_GAP = re.compile(r",?\s+")  # the gaps ngspice 39 itself reads between TC's two values on R


def pspice_tc_marker(element: str, text: str) -> re.Match | None:
    """Where ``text`` (an R, C or L statement) writes TC as only PSpice does (None: as ngspice 39 reads it too)."""
    m = PSPICE_TC.search(text)
    if m is None or element[:1].upper() not in "RCL":
        return None
    if element[:1].upper() != "R" or (m.group(3) is not None and not _NGSPICE_TC_GAP.fullmatch(m.group(2))):
        return m
    return None


#: analysis and output commands, kept verbatim in Netlist.controls
CONTROL_COMMANDS = {
    ".tran", ".ac", ".dc", ".op", ".noise", ".tf", ".sens", ".pz", ".disto", ".four", ".fourier",
    ".meas", ".measure", ".print", ".plot", ".probe", ".save", ".ic", ".nodeset", ".options",
    ".option", ".opt", ".temp", ".width", ".backanno", ".step", ".wave",
}  # fmt: skip
#: instance parameters accepted per element letter (stored upper case in Element.params)
INSTANCE_PARAMS = {
    "R": {"TC1", "TC2", "TC", "M", "SCALE", "TEMP", "DTEMP", "AC", "NOISY"},
    "C": {"IC", "M", "SCALE", "TC1", "TC2", "TC", "TEMP", "DTEMP", "RSER", "LSER", "RPAR", "CPAR"},
    "L": {"IC", "M", "SCALE", "TC1", "TC2", "TC", "TEMP", "DTEMP", "NT", "RSER", "RPAR", "CPAR"},
    "V": {"RSER", "CPAR"},
    "I": {"RSER", "CPAR"},
    "E": set(),
    "G": {"M"},
    "F": {"M"},
    "H": set(),
    "A": set(),
    "B": {"TC1", "TC2", "TEMP", "DTEMP"},
    "D": {"AREA", "M", "PJ", "IC", "TEMP", "DTEMP"},
    "Q": {"AREA", "AREAB", "AREAC", "M", "IC", "TEMP", "DTEMP"},
    "J": {"AREA", "M", "IC", "TEMP", "DTEMP"},
    "M": {"L", "W", "AD", "AS", "PD", "PS", "NRD", "NRS", "M", "IC", "TEMP", "DTEMP"},
}
_VALUE_KEYS = {
    "R": ("R", "RESISTANCE", "VALUE"),
    "C": ("C", "CAPACITANCE", "VALUE"),
    "L": ("L", "INDUCTANCE", "VALUE"),
}
_WAVEFORMS = {"sin": "SIN", "sine": "SIN", "pulse": "PULSE", "pwl": "PWL", "exp": "EXP", "sffm": "SFFM"}
_UNSUPPORTED_WAVEFORMS = ("am", "trnoise", "trrandom", "external", "distof1", "distof2", "port")
_SOURCE_KEYWORDS = {"dc", "ac", *_WAVEFORMS, *_UNSUPPORTED_WAVEFORMS}
_BUILTIN_NAMES = {*CONSTANTS, "time", "temper", "hertz"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_FUNC_DEPTH = 50


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _warn(message: str, loc: Loc | None, category: type[Warning] = NetlistWarning) -> None:
    """Warn with the caller of the netlist package as the reported location."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == _PACKAGE_DIR:
        level, frame = level + 1, frame.f_back
    warnings.warn(f"{loc}: {message}" if loc else message, category, stacklevel=level)


def library_path(including: str, name: str) -> str | None:
    """The file an ``.include``/``.lib`` names, or None when it does not exist.

    Relative paths are relative to the including file.  A path that does not exist here (LTspice
    writes its own library folders, ``C:\\Users\\...\\lib\\sub\\koren.lib``) falls back to the
    same file name next to the including file, which is where a published netlist keeps it.
    A relative path written with backslashes (``EIT_sub\\vdc_single.sub``) is also tried with
    slashes, and file names match without regard to case when only one file matches (LTspice
    runs on Windows, whose file names are case-insensitive: ``vdc_single.sub`` finds
    ``Vdc_single.sub``).
    """
    tries = [name]
    if "\\" in name and not re.match(r"[A-Za-z]:", name):
        tries.append(name.replace("\\", "/"))
    base = re.split(r"[\\/]", name)[-1]
    if base and base != name:
        tries.append(base)
    for candidate in tries:
        found = _existing(_Parser.resolve(including, candidate))
        if found is not None:
            return found
    return None


def _existing(path: str) -> str | None:
    """``path`` if it is a file, else the one file in its folder whose name equals it but for case."""
    if os.path.isfile(path):
        return path
    folder, leaf = os.path.split(path)
    try:
        matches = [f for f in os.listdir(folder or ".") if f.lower() == leaf.lower()]
    except OSError:
        return None
    if len(matches) == 1 and os.path.isfile(os.path.join(folder, matches[0])):
        return os.path.join(folder, matches[0])
    return None


_LTSPICE_STANDARD = re.compile(r"standard\.(bjt|dio|mos|jft|cap|ind|res|bead)", re.IGNORECASE)


def ltspice_standard_library(name: str) -> bool:
    """Whether ``name`` is one of the component libraries LTspice ships (``...\\lib\\cmp\\standard.bjt``)."""
    return _LTSPICE_STANDARD.fullmatch(re.split(r"[\\/]", name)[-1].strip("'\"")) is not None


def detect_dialect(statements: list[Statement]) -> tuple[str, Loc, str] | None:
    """(dialect, where, what) for the first LTspice- or PSpice-only marker in ``statements``, or None."""
    for st in statements:
        if st.control:
            continue
        for pattern, what in _LTSPICE_MARKERS:
            m = pattern.search(st.text)
            if m is not None:
                return "ltspice", st.loc_at(m.start()), what
        name = st.text.split(None, 1)[0]
        m = pspice_tc_marker(name, st.text)
        if m is not None:
            return "pspice", st.loc_at(m.start()), f"'{m.group(0)}' on {name.upper()}"
    return None


def read_text(path: str) -> str:
    """A netlist file's text: UTF-16 when it has a byte-order mark (LTspice), else UTF-8, else Latin-1."""
    data = Path(path).read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class _Parser:
    def __init__(self, path: str, dialect: str | None = None):
        if dialect is not None and dialect not in DIALECTS:
            raise NetlistError(f"unknown dialect '{dialect}' (use {', '.join(DIALECTS)})", None)
        self.path = path
        self.dialect = dialect or "ngspice"
        self.auto_dialect = dialect is None
        self.netlist = Netlist(path=path, dialect=self.dialect)
        self.scopes: list[Scope] = [self.netlist]
        self.element_locs: dict[int, dict[str, Loc]] = {id(self.netlist): {}}
        self.param_locs: dict[int, dict[str, Loc]] = {id(self.netlist): {}}
        self.funcs: dict[str, tuple[list[str], Expr, Loc]] = {}
        self.func_arity: dict[str, int] = {}
        self.st: Statement | None = None  # the statement being parsed, for internal-error messages

    # ============================================================ pass 1: files
    def read(
        self, path: str, text: str, *, main: bool, stack: tuple[tuple[str, str | None], ...]
    ) -> list[Statement]:
        lines = split_lines(text)
        self.netlist.sources.setdefault(path, lines)
        title, statements = lex(path, lines, has_title=main)
        if main:
            self.netlist.title = title or ""
            self._check_title(title or "")
        return self.expand(statements, path, stack)

    def _check_title(self, title: str) -> None:
        looks_like_element = re.fullmatch(r"[RCL]\w*\s+\S+\s+\S+\s+[-+.{\d]\S*\s*", title, re.IGNORECASE)
        if title.startswith(".") or looks_like_element:
            if first_word(title) == ".title":
                self.netlist.title = title.split(None, 1)[1] if len(title.split(None, 1)) > 1 else ""
                return
            _warn(
                f"the first line is always the title in SPICE and is not read as a circuit line: '{title}'",
                Loc(self.path, 1),
            )

    def expand(self, statements: list[Statement], path: str, stack: tuple) -> list[Statement]:
        """Replace .include/.lib statements by the statements they name."""
        out: list[Statement] = []
        i = 0
        while i < len(statements):
            st = statements[i]
            i += 1
            if st.control:
                out.append(st)
                continue
            word = first_word(st.text)
            if word in (".include", ".inc", ".incl"):
                args = self._file_args(st, 1, 1, "'.include FILE'")
                out.extend(self.include(st, path, args[0], None, stack))
            elif word == ".lib":
                args = self._file_args(st, 1, 2, "'.lib FILE SECTION'")
                if len(args) == 2:
                    out.extend(self.include(st, path, args[0], args[1], stack))
                elif library_path(path, args[0]) is not None:  # LTspice: '.lib FILE' is an include
                    out.extend(self.include(st, path, args[0], None, stack))
                elif ltspice_standard_library(args[0]):
                    _warn(
                        f"LTspice's own library '{args[0]}' is not here and is skipped; a model taken from it "
                        "will be reported as not defined (put the file next to the netlist)",
                        st.loc,
                    )
                else:  # a section header of a library read whole: skip the section
                    j = self._section_end(statements, i)
                    if j is None:
                        raise NetlistError(
                            f"library file '{args[0]}' not found (looked for {self.resolve(path, args[0])})",
                            st.loc,
                        )
                    i = j + 1
            elif word == ".endl":
                raise NetlistError("'.endl' without '.lib SECTION'", st.loc)
            else:
                out.append(st)
        return out

    @staticmethod
    def _section_end(statements: list[Statement], start: int) -> int | None:
        for j in range(start, len(statements)):
            if not statements[j].control and first_word(statements[j].text) == ".endl":
                return j
        return None

    def _file_args(self, st: Statement, least: int, most: int, usage: str) -> list[str]:
        cur = Cursor(st)
        cur.next()
        args = []
        while not cur.at_end():
            tok = cur.next()
            assert tok is not None
            if tok.kind not in ("word", "string", "quote"):
                raise NetlistError(
                    f"unexpected '{tok.text}' in {first_word(st.text)} (expected {usage})", st.loc
                )
            args.append(tok.text)
        if not least <= len(args) <= most:
            raise NetlistError(f"{first_word(st.text)} expects {usage}", st.loc)
        return args

    @staticmethod
    def resolve(including: str, name: str) -> str:
        name = os.path.expanduser(name)
        if os.path.isabs(name):
            return os.path.normpath(name)
        base = os.path.dirname(including) if not including.startswith("<") else ""
        return os.path.normpath(os.path.join(base, name))

    def include(
        self, st: Statement, including: str, name: str, section: str | None, stack: tuple
    ) -> list[Statement]:
        found = library_path(including, name)
        path = found if found is not None else self.resolve(including, name)
        if found is not None and os.path.normpath(found) != self.resolve(including, name):
            _warn(f"'{name}' is not here; reading {found} (the same file name next to the netlist)", st.loc)
        key = (os.path.realpath(path), section.lower() if section else None)
        if key in stack:
            chain = " -> ".join(p + (f" [{s}]" if s else "") for p, s in (*stack, key))
            raise NetlistError(f"include cycle: {chain}", st.loc)
        try:
            text = read_text(path)
        except FileNotFoundError:
            raise NetlistError(f"include file '{name}' not found (looked for {path})", st.loc) from None
        except OSError as exc:
            raise NetlistError(f"cannot read include file '{name}': {exc.strerror or exc}", st.loc) from None
        if section is None:
            return self.read(path, text, main=False, stack=(*stack, key))
        lines = split_lines(text)
        self.netlist.sources.setdefault(path, lines)
        _, statements = lex(path, lines, has_title=False)
        for j, s in enumerate(statements):
            parts = s.text.split()
            if (
                not s.control
                and len(parts) == 2
                and parts[0].lower() == ".lib"
                and parts[1].lower() == section.lower()
            ):
                end = self._section_end(statements, j + 1)
                if end is None:
                    raise NetlistError(f"library section '{parts[1]}' has no '.endl'", s.loc)
                return self.expand(statements[j + 1 : end], path, (*stack, key))
        raise NetlistError(f"library section '{section}' not found in '{name}'", st.loc)

    def choose_dialect(self, statements: list[Statement]) -> None:
        """Without an explicit dialect, LTspice's own markers switch to 'ltspice', PSpice's 'TC=a,b' to 'pspice'
        (with a one-line note)."""
        if not self.auto_dialect:
            return
        found = detect_dialect(statements)
        if found is None:
            return
        self.dialect, loc, what = found
        self.netlist.dialect = self.dialect
        self.netlist.dialect_note = f"{loc}: reading as {self.dialect} (detected from {what}; --dialect to override)"
        _warn(f"reading as {self.dialect} (detected from {what}; --dialect to override)", loc, DialectNote)

    # ============================================================ pass 2: .func
    def collect_funcs(self, statements: list[Statement]) -> None:
        """``.func name(a, b) = {expr}``: all heads first, so bodies may call each other."""
        heads: list[tuple[Statement, str, list[str], Cursor]] = []
        locs: dict[str, Loc] = {}
        for st in statements:
            if not st.control and first_word(st.text) == ".func":
                self.st = st
                name, args, cur = self.func_head(st)
                if name in locs:
                    raise NetlistError(f".func '{name}' is defined twice (first at {locs[name]})", st.loc)
                locs[name] = st.loc
                self.func_arity[name] = len(args)
                heads.append((st, name, args, cur))
        for st, name, args, cur in heads:
            self.st = st
            body = self.expr_value(cur, st, expand=False)
            self.expect_end(cur, st)
            self.funcs[name] = (args, body, st.loc)

    def func_head(self, st: Statement) -> tuple[str, list[str], Cursor]:
        cur = Cursor(st)
        cur.next()
        name_tok = cur.next()
        if name_tok is None or name_tok.kind != "word" or not _IDENT.fullmatch(name_tok.text):
            raise NetlistError("expected '.func NAME(ARGS) = {EXPR}'", st.loc)
        name = name_tok.text.lower()
        if name in FUNCTIONS or name in CONDITIONAL_FUNCTIONS or name in ("v", "i"):
            raise NetlistError(f".func cannot redefine the built-in function '{name}'", st.loc)
        if not cur.peek_is("("):
            raise NetlistError(f"expected '(' after '.func {name_tok.text}'", st.loc)
        cur.next()
        args: list[str] = []
        while not cur.peek_is(")"):
            tok = cur.next()
            if tok is None or tok.kind != "word" or not _IDENT.fullmatch(tok.text):
                raise NetlistError(f"bad argument list in '.func {name_tok.text}'", st.loc)
            args.append(tok.text.lower())
        cur.next()
        if cur.peek_is("="):
            cur.next()
        return name, args, cur

    def expand_funcs(self, expr: Expr, loc: Loc, depth: int = 0) -> Expr:
        """Inline calls of ``.func`` functions."""
        if not self.funcs or not any(isinstance(e, Call) and e.func in self.funcs for e in walk(expr)):
            return expr
        if depth > _MAX_FUNC_DEPTH:
            raise NetlistError(".func definitions call each other recursively", loc)

        def inline(e: Expr) -> Expr:
            if isinstance(e, Call):
                args = tuple(inline(a) for a in e.args)
                if e.func in self.funcs:
                    params, body, _ = self.funcs[e.func]
                    return self.expand_funcs(substitute(body, dict(zip(params, args))), loc, depth + 1)
                return Call(e.func, args)
            return substitute_children(e, inline)

        return inline(expr)

    # ============================================================ pass 3: statements
    @property
    def scope(self) -> Scope:
        return self.scopes[-1]

    def statement(self, st: Statement) -> None:
        self.st = st
        if st.control:
            self.netlist.controls.append(Control(st.text, st.loc))
            return
        cur = Cursor(st)
        head = cur.next()
        if head is None or head.kind != "word":
            raise NetlistError(
                f"expected an element name or a dot command, found '{st.text.split()[0]}'", st.loc
            )
        if head.text.startswith("."):
            self.dot(head.text.lower(), cur, st)
        else:
            self.element(head, cur, st)

    # ------------------------------------------------------------ helpers
    def expr(
        self, st: Statement, start: int, end: int, *, whole: bool = True, expand: bool = True
    ) -> tuple[Expr, int]:
        expr, stop = parse_expr_in(
            st.text, start, end, st.span, st.loc_at, whole=whole, user_funcs=self.func_arity
        )
        if any(isinstance(e, Call) and e.func == "limit" for e in walk(expr)):
            _warn(
                "limit(x, lo, hi) is evaluated as PSpice's clamp; ngspice 39 has no such B-source function",
                st.loc,
            )
        if self.dialect != "ngspice":  # LTspice/PSpice pwr(x, y) is |x|^y: ngspice's pow(); their pwrs is pwr
            expr = _ltspice_powers(expr)
        if expand:
            expr = self.expand_funcs(expr, st.loc)
        return expr, stop

    def value(self, tok: Token | None, st: Statement, what: str) -> Expr:
        """One value token: a number, a ``{expr}``/``'expr'``, or a bare parameter name."""
        if tok is None:  # at the end of the statement: name its last physical line
            raise NetlistError(f"missing {what}", st.loc_at(max(len(st.text) - 1, 0)))
        if tok.kind in ("brace", "quote"):
            assert tok.inner is not None
            return self.expr(st, tok.inner[0], tok.inner[1])[0]
        if tok.kind == "word":
            if looks_numeric(tok.text):
                number = parse_number(tok.text)
                if number is None:
                    problem = number_problem(tok.text)
                    if any(c in "*/+-^" for c in tok.text[1:]):
                        problem = f"bad value '{tok.text}' (expressions go in braces: {{...}})"
                    raise NetlistError(f"{problem} ({what})", st.loc_at(tok.start))
                return Num(number, st.span(tok.start, tok.end))
            if _IDENT.fullmatch(tok.text):
                return Name(tok.text.lower())
            raise NetlistError(
                f"bad value '{tok.text}' for {what} (expressions go in braces: {{...}})", st.loc_at(tok.start)
            )
        raise NetlistError(f"expected {what}, found '{tok.text}'", st.loc_at(tok.start))

    def expr_value(self, cur: Cursor, st: Statement, *, expand: bool = True) -> Expr:
        """An expression after ``=``: braced, quoted, or bare up to where it cannot continue."""
        tok = cur.peek()
        if tok is None:
            raise NetlistError("missing expression after '='", st.loc)
        if tok.kind in ("brace", "quote"):
            cur.next()
            assert tok.inner is not None
            return self.expr(st, tok.inner[0], tok.inner[1], expand=expand)[0]
        expr, stop = self.expr(st, tok.start, len(st.text), whole=False, expand=expand)
        cur.pos = stop
        return expr

    @staticmethod
    def is_value_token(tok: Token | None) -> bool:
        return tok is not None and (
            tok.kind in ("brace", "quote") or (tok.kind == "word" and looks_numeric(tok.text))
        )

    def expect_end(self, cur: Cursor, st: Statement) -> None:
        tok = cur.peek()
        if tok is not None:
            raise NetlistError(f"unexpected '{st.text[tok.start : tok.end]}'", st.loc_at(tok.start))

    def positionals(self, cur: Cursor, st: Statement, name: str) -> list[Token]:
        """Tokens up to the first ``key=value`` (or the end)."""
        out = []
        while not cur.at_end() and not cur.at_key():
            tok = cur.next()
            assert tok is not None
            if tok.kind in ("=", "(", ")", "string"):
                raise NetlistError(
                    f"{name}: unexpected '{st.text[tok.start : tok.end]}'", st.loc_at(tok.start)
                )
            out.append(tok)
        return out

    def key_params(
        self, cur: Cursor, st: Statement, name: str, allowed: set[str] | None, lower: bool = False
    ) -> dict[str, Expr]:
        """``key=value`` pairs to the end of the statement (keys upper case, or lower with ``lower``)."""
        params: dict[str, Expr] = {}
        while not cur.at_end():
            if not cur.at_key():
                tok = cur.peek()
                assert tok is not None
                raise NetlistError(
                    f"{name}: unexpected '{st.text[tok.start : tok.end]}'", st.loc_at(tok.start)
                )
            key_tok = cur.next()
            cur.next()
            assert key_tok is not None
            key = key_tok.text.lower() if lower else key_tok.text.upper()
            if allowed is not None and key not in allowed:
                accepted = ", ".join(sorted(allowed)) or "none"
                raise NetlistError(
                    f"{name}: unknown parameter '{key_tok.text}' (accepted: {accepted})",
                    st.loc_at(key_tok.start),
                )
            if key == "TC" and name[:1] in "RCL" and not lower:
                pairs = self.temperature_coefficients(cur, st, name, key_tok)
            else:
                pairs = {key: self.value(cur.next(), st, f"the value of {key_tok.text}")}
            for k, v in pairs.items():
                if k in params:
                    said = key_tok.text if k == key else k
                    raise NetlistError(f"{name}: parameter '{said}' is given twice", st.loc_at(key_tok.start))
                params[k] = v
        return params

    def temperature_coefficients(self, cur: Cursor, st: Statement, name: str, key_tok: Token) -> dict[str, Expr]:
        """``TC=a [b]`` on R, C, L (after the ``=``): TC1 = a (1/degC) and TC2 = b (1/degC^2), as ngspice 39 reads
        them on R and its PSpice mode on all three (:data:`PSPICE_TC`); in the ngspice dialect what ngspice rejects
        is an error."""
        first = cur.next()
        out = {"TC1": self.value(first, st, f"the value of {key_tok.text}")}
        second = cur.peek()
        if first is not None and self.is_value_token(second) and not cur.at_key():
            assert second is not None
            cur.next()
            out["TC2"] = self.value(second, st, f"the second value of {key_tok.text}")
        if self.dialect == "ngspice":
            m = pspice_tc_marker(name, st.text[key_tok.start :])
            if m is not None:
                said = "tc" if name[0] != "R" else st.text[second.start : second.end] if second else "tc"
                raise NetlistError(
                    f"{name}: '{m.group(0)}' is PSpice syntax, which ngspice 39 rejects outside its PSpice mode "
                    f'("unknown parameter ({said.lower()})"); use --dialect pspice, or write tc1= tc2=',
                    st.loc_at(key_tok.start),
                )
        return out

    def node(self, tok: Token, st: Statement, name: str) -> str:
        if tok.kind != "word" or not tok.text:
            raise NetlistError(
                f"{name}: expected a node name, found '{st.text[tok.start : tok.end]}'", st.loc_at(tok.start)
            )
        return normalise_node(tok.text)

    def nodes(self, cur: Cursor, st: Statement, name: str, count: int, usage: str) -> list[str]:
        out = []
        for _ in range(count):
            tok = cur.peek()
            if tok is None or cur.at_key():
                raise NetlistError(f"{name}: missing nodes (expected '{usage}')", st.loc)
            cur.next()
            out.append(self.node(tok, st, name))
        return out

    # ------------------------------------------------------------ elements
    def element(self, head: Token, cur: Cursor, st: Statement) -> None:
        name = head.text.upper()
        letter = name[0]
        if letter not in SUPPORTED_ELEMENTS:
            if letter in UNSUPPORTED_ELEMENTS:
                raise NetlistError(
                    f"element type '{letter}' ({UNSUPPORTED_ELEMENTS[letter]}) is not supported", st.loc
                )
            raise NetlistError(f"unknown element or statement '{head.text}'", st.loc)
        seen = self.element_locs.setdefault(id(self.scope), {})
        if name in seen:
            raise NetlistError(f"element {name} is defined twice (first at {seen[name]})", st.loc)
        handler: Callable[[str, Cursor, Statement], Element] = {
            "R": self.passive,
            "C": self.passive,
            "L": self.passive,
            "V": self.source,
            "I": self.source,
            "E": self.controlled,
            "G": self.controlled,
            "B": self.behavioural,
            "D": self.diode,
            "Q": self.bjt,
            "J": self.jfet,
            "M": self.mosfet,
            "X": self.instance,
            "F": self.current_controlled,
            "H": self.current_controlled,
            "A": self.code_model,
        }[letter]
        el = handler(name, cur, st)
        seen[name] = st.loc
        self.scope.elements.append(el)

    def passive(self, name: str, cur: Cursor, st: Statement) -> Element:
        kind = name[0]
        unit = {"R": "resistance", "C": "capacitance", "L": "inductance"}[kind]
        usage = f"{name} n+ n- {unit}"
        nodes = self.nodes(cur, st, name, 2, usage)
        pos = self.positionals(cur, st, name)
        if len(pos) > 1:
            raise NetlistError(
                f"{name}: unexpected '{pos[1].text}' (expected '{usage}')", st.loc_at(pos[1].start)
            )
        keys = _VALUE_KEYS[kind]
        params = self.key_params(cur, st, name, INSTANCE_PARAMS[kind] | set(keys))
        given = [k for k in keys if k in params]
        if len(given) + len(pos) > 1:
            raise NetlistError(f"{name}: the {unit} is given twice", st.loc)
        tail = signed_tail(pos[0].text) if pos and pos[0].kind == "word" else None
        if tail is not None:  # '1-3k': ngspice 39 keeps the last number, sign included
            number = parse_number(tail)
            assert number is not None
            _warn(f"{name}: ngspice 39 reads the {unit} '{pos[0].text}' as two numbers and keeps the last, "
                  f"{tail}; write the value meant", st.loc)
            value = Num(number, st.span(pos[0].end - len(tail), pos[0].end))
        elif pos:
            value = self.value(pos[0], st, f"the {unit} of {name}")
        elif given:
            value = params.pop(given[0])
        else:
            raise NetlistError(f"{name}: missing {unit} value (expected '{usage}')", st.loc)
        return Element(name, kind, nodes, st.loc, value=value, params=params)

    def source(self, name: str, cur: Cursor, st: Statement) -> Element:
        kind = name[0]
        nodes = self.nodes(cur, st, name, 2, f"{name} n+ n- [DC value] [AC mag [phase]] [waveform(...)]")
        spec = SourceSpec()
        params: dict[str, Expr] = {}
        while not cur.at_end():
            tok = cur.peek()
            assert tok is not None
            word = cur.peek_word()
            if word in ("dc", "ac") or word in _WAVEFORMS or word in _UNSUPPORTED_WAVEFORMS:
                cur.next()
                if cur.peek_is("=") and word in ("dc", "ac"):
                    cur.next()
                if word == "dc":
                    if spec.dc is not None:
                        raise NetlistError(f"{name}: the DC value is given twice", st.loc)
                    spec.dc = self.paren_value(cur, st, name) if cur.peek_is("(") else self.value(
                        cur.next(), st, f"the DC value of {name}"
                    )
                elif word == "ac":
                    if spec.ac is not None:
                        raise NetlistError(f"{name}: AC is given twice", st.loc)
                    mag = self.value(cur.next(), st, f"the AC magnitude of {name}")
                    phase: Expr = Num(0.0)
                    if self.is_value_token(cur.peek()):
                        phase = self.value(cur.next(), st, f"the AC phase of {name}")
                    spec.ac = (mag, phase)
                elif word in _UNSUPPORTED_WAVEFORMS:
                    raise NetlistError(
                        f"{name}: waveform '{tok.text}' is not supported", st.loc_at(tok.start)
                    )
                else:
                    if spec.waveform is not None:
                        raise NetlistError(f"{name}: more than one waveform", st.loc_at(tok.start))
                    spec.waveform = _WAVEFORMS[word]
                    spec.args = tuple(self.waveform_args(cur, st, name, spec.waveform))
            elif tok.kind == "(" and spec.dc is None and spec.waveform is None and spec.ac is None:
                spec.dc = self.paren_value(cur, st, name)  # KiCad writes 'V1 a b ( 9 )' and 'dc(5)'
            elif cur.at_key() and word == "wavefile" and kind == "V":
                self.wavefile(cur, st, name, spec)
            elif cur.at_key():
                allowed = INSTANCE_PARAMS[kind] | ({"TD", "R"} if spec.waveform == "PWL" else set())
                allowed |= {"CHAN"} if spec.waveform == "WAVEFILE" else set()
                params.update(self.key_params_one(cur, st, name, allowed, params))
            elif (
                spec.dc is None
                and spec.waveform is None
                and spec.ac is None
                and (self.is_value_token(tok) or (tok.kind == "word" and _IDENT.fullmatch(tok.text)))
            ):
                spec.dc = self.value(cur.next(), st, f"the value of {name}")
            else:
                raise NetlistError(
                    f"{name}: unexpected '{st.text[tok.start : tok.end]}'", st.loc_at(tok.start)
                )
        return Element(name, kind, nodes, st.loc, params=params, source=spec)

    def paren_value(self, cur: Cursor, st: Statement, name: str) -> Expr:
        """``( 9 )``: one value in parentheses (KiCad's DC sources), as ngspice reads it."""
        open_tok = cur.next()
        assert open_tok is not None
        tok = cur.next()
        if tok is None or tok.kind == ")":
            raise NetlistError(f"{name}: empty '( )' (expected a DC value)", st.loc_at(open_tok.start))
        value = self.value(tok, st, f"the DC value of {name}")
        close = cur.next()
        if close is None or close.kind != ")":
            raise NetlistError(f"{name}: expected ')' after the DC value", st.loc_at(open_tok.start))
        return value

    def wavefile(self, cur: Cursor, st: Statement, name: str, spec: SourceSpec) -> None:
        """LTspice ``V1 n+ n- wavefile=FILE [chan=N]``: this source plays an audio file (the input)."""
        key = cur.next()
        assert key is not None
        if self.dialect == "ngspice":
            raise NetlistError(
                f"{name}: 'wavefile=' is LTspice syntax, which ngspice rejects; use --dialect ltspice",
                st.loc_at(key.start),
            )
        cur.next()
        tok = cur.next()
        if tok is None or tok.kind not in ("word", "string"):
            raise NetlistError(f"{name}: expected 'wavefile=FILE'", st.loc_at(key.start))
        if spec.waveform is not None or spec.dc is not None:
            raise NetlistError(f"{name}: 'wavefile=' together with another value", st.loc_at(key.start))
        spec.waveform = "WAVEFILE"
        spec.file = tok.text

    def key_params_one(
        self, cur: Cursor, st: Statement, name: str, allowed: set[str], have: dict
    ) -> dict[str, Expr]:
        key_tok = cur.next()
        cur.next()
        assert key_tok is not None
        key = key_tok.text.upper()
        if key not in allowed:
            raise NetlistError(
                f"{name}: unknown parameter '{key_tok.text}' (accepted: {', '.join(sorted(allowed))})",
                st.loc_at(key_tok.start),
            )
        if key in have:
            raise NetlistError(f"{name}: parameter '{key_tok.text}' is given twice", st.loc_at(key_tok.start))
        return {key: self.value(cur.next(), st, f"the value of {key_tok.text}")}

    def waveform_args(self, cur: Cursor, st: Statement, name: str, waveform: str) -> list[Expr]:
        args: list[Expr] = []
        if cur.peek_is("("):
            open_tok = cur.next()
            assert open_tok is not None
            while not cur.peek_is(")"):
                tok = cur.next()
                if tok is None:
                    raise NetlistError(f"{name}: missing ')' after {waveform}(", st.loc_at(open_tok.start))
                args.append(self.value(tok, st, f"a {waveform} argument of {name}"))
            cur.next()
        else:
            while self.is_value_token(cur.peek()):
                args.append(self.value(cur.next(), st, f"a {waveform} argument of {name}"))
        if not args:
            raise NetlistError(f"{name}: {waveform} needs arguments", st.loc)
        return args

    def controlled(self, name: str, cur: Cursor, st: Statement) -> Element:
        kind = name[0]
        usage = f"{name} out+ out- ctrl+ ctrl- gain' or '{name} out+ out- VALUE={{expr}}"
        nodes = self.nodes(cur, st, name, 2, usage)
        word = cur.peek_word()
        keywords = ("value", "vol") if kind == "E" else ("value", "cur")
        if word in keywords:
            cur.next()
            if cur.peek_is("="):
                cur.next()
            expr = self.expr_value(cur, st)
            params = self.key_params(cur, st, name, INSTANCE_PARAMS[kind])
            params["VALUE"] = expr
            return Element(name, kind, nodes, st.loc, params=params)
        if word is not None and word.startswith("poly"):
            return self.poly(name, nodes, cur, st)
        if word in ("table", "laplace", "freq", "chebyshev"):
            raise NetlistError(f"{name}: {word.upper()} controlled sources are not supported", st.loc)
        pos = self.positionals(cur, st, name)
        if len(pos) != 3:
            raise NetlistError(f"{name}: expected '{usage}'", st.loc)
        nodes += [self.node(t, st, name) for t in pos[:2]]
        gain = self.value(pos[2], st, f"the gain of {name}")
        params = self.key_params(cur, st, name, INSTANCE_PARAMS[kind])
        return Element(name, kind, nodes, st.loc, value=gain, params=params)

    def current_controlled(self, name: str, cur: Cursor, st: Statement) -> Element:
        """``F1 out+ out- Vctrl gain`` / ``H1 out+ out- Vctrl ohms``: driven by the current through Vctrl."""
        kind = name[0]
        what = "gain" if kind == "F" else "transresistance"
        usage = f"{name} out+ out- Vcontrol {what}"
        nodes = self.nodes(cur, st, name, 2, usage)
        word = cur.peek_word()
        if word is not None and word.startswith("poly"):
            return self.poly(name, nodes, cur, st)
        pos = self.positionals(cur, st, name)
        if len(pos) != 2 or pos[0].kind != "word" or not _IDENT.fullmatch(pos[0].text):
            raise NetlistError(f"{name}: expected '{usage}'", st.loc)
        gain = self.value(pos[1], st, f"the {what} of {name}")
        params = self.key_params(cur, st, name, INSTANCE_PARAMS[kind])
        params["CONTROL"] = BranchI(pos[0].text.upper())
        return Element(name, kind, nodes, st.loc, value=gain, params=params)

    def poly(self, name: str, nodes: list[str], cur: Cursor, st: Statement) -> Element:
        """A linear ``POLY(n)`` source: ``E/G out+ out- POLY(n) (a1,b1) ... (an,bn) p0 p1 ... pn``,
        ``F/H out+ out- POLY(n) V1 ... Vn p0 p1 ... pn`` (ngspice manual, "Polynomial Source
        Functions"): ``p0 + p1 x1 + ... + pn xn`` with ``x`` the controlling voltages or currents,
        read as the ``VALUE={...}`` source it equals (E and H give a voltage, G and F a current).
        Coefficients past the linear ones (the x1^2, x1 x2, ... terms) are an error."""
        kind = name[0]
        usage = f"{name} out+ out- POLY(n) controls... p0 p1 ... pn"
        head = cur.next()
        assert head is not None
        rest = head.text[4:]
        if rest:  # 'POLY(2)' lexes as POLY ( 2 ); a glued 'POLY2' is not SPICE
            raise NetlistError(f"{name}: expected '{usage}'", st.loc_at(head.start))
        if not cur.peek_is("("):
            raise NetlistError(f"{name}: expected 'POLY(n)' (expected '{usage}')", st.loc_at(head.start))
        cur.next()
        ntok = cur.next()
        if ntok is None or ntok.kind != "word" or not ntok.text.isdigit() or int(ntok.text) < 1 or not cur.peek_is(")"):
            raise NetlistError(f"{name}: expected 'POLY(n)' with a dimension n >= 1", st.loc)
        cur.next()
        n = int(ntok.text)
        toks: list[Token] = []
        while not cur.at_end():
            tok = cur.next()
            assert tok is not None
            if tok.kind in ("(", ")"):
                continue
            if tok.kind != "word":
                raise NetlistError(f"{name}: unexpected '{st.text[tok.start : tok.end]}' (expected '{usage}')",
                                   st.loc_at(tok.start))
            toks.append(tok)
        per = 2 if kind in ("E", "G") else 1
        if len(toks) < per * n + 1:
            raise NetlistError(f"{name}: POLY({n}) needs {per * n} controls and at least one coefficient", st.loc)
        ctrl, coeffs = toks[: per * n], toks[per * n :]
        if len(coeffs) > n + 1:
            raise NetlistError(f"{name}: POLY({n}) terms beyond the linear ones (coefficient {n + 2} on) are not "
                               "supported; write VALUE={...} or a B source", st.loc_at(coeffs[n + 1].start))
        xs: list[Expr] = []
        for i in range(n):
            if per == 2:
                a, b = (self.node(t, st, name) for t in ctrl[2 * i : 2 * i + 2])
                xs.append(NodeV(a, None if b == "0" else b))
            else:
                if not _IDENT.fullmatch(ctrl[i].text):
                    raise NetlistError(f"{name}: expected a controlling source name, found '{ctrl[i].text}'",
                                       st.loc_at(ctrl[i].start))
                xs.append(BranchI(ctrl[i].text.upper()))
        values = [self.value(t, st, f"a POLY coefficient of {name}") for t in coeffs]
        expr: Expr = values[0]
        for c, x in zip(values[1:], xs):
            expr = Binary("+", expr, Binary("*", c, x))
        out_kind = {"E": "E", "H": "E", "G": "G", "F": "G"}[kind]
        return Element(name, out_kind, nodes, st.loc, params={"VALUE": expr})

    def code_model(self, name: str, cur: Cursor, st: Statement) -> Element:
        """``ARV1 r0 wiper r1 MODEL``: an XSPICE instance; only the ``potentiometer`` code model is supported."""
        usage = f"{name} r0 wiper r1 POTENTIOMETER_MODEL"
        pos: list[Token] = []
        while not cur.at_end():
            tok = cur.next()
            assert tok is not None
            if tok.kind != "word" or tok.text.startswith("%") or "[" in tok.text or "]" in tok.text:
                raise NetlistError(
                    f"{name}: XSPICE port lists ('{st.text[tok.start : tok.end]}') are not supported; the only "
                    f"code model supported is the potentiometer, '{usage}'",
                    st.loc_at(tok.start),
                )
            pos.append(tok)
        if len(pos) != 4:
            raise NetlistError(f"{name}: expected '{usage}'", st.loc)
        nodes = [self.node(t, st, name) for t in pos[:3]]
        return Element(name, "A", nodes, st.loc, model=pos[3].text.upper())

    def behavioural(self, name: str, cur: Cursor, st: Statement) -> Element:
        nodes = self.nodes(cur, st, name, 2, f"{name} n+ n- V={{expr}}")
        word = cur.peek_word()
        if word not in ("v", "i"):
            raise NetlistError(f"{name}: behavioural source needs V={{expr}} or I={{expr}}", st.loc)
        cur.next()
        if cur.peek_is("="):
            cur.next()
        expr = self.expr_value(cur, st)
        params = self.key_params(cur, st, name, INSTANCE_PARAMS["B"])
        params[word.upper()] = expr
        return Element(name, "B", nodes, st.loc, params=params)

    def _off_flag(self, pos: list[Token], name: str, st: Statement) -> list[Token]:
        keep = [t for t in pos if not (t.kind == "word" and t.text.lower() == "off")]
        if len(keep) != len(pos):
            _warn(f"{name}: OFF (an initial-guess hint) is accepted but not modelled", st.loc)
        return keep

    def _model_device(self, name: str, cur: Cursor, st: Statement, letter: str, n_nodes: int, usage: str,
                      area: bool) -> Element:
        """``<letter> nodes... model [area] [off] [key=value ...]``: the shape diodes, JFETs and MOSFETs share."""
        nodes = self.nodes(cur, st, name, n_nodes, usage)
        pos = self._off_flag(self.positionals(cur, st, name), name, st)
        if not pos or pos[0].kind != "word":
            raise NetlistError(f"{name}: missing model name (expected '{usage}')", st.loc)
        n_pos = 2 if area else 1
        if len(pos) > n_pos:
            raise NetlistError(f"{name}: unexpected '{pos[n_pos].text}' (expected '{usage}')",
                               st.loc_at(pos[n_pos].start))
        params = self.key_params(cur, st, name, INSTANCE_PARAMS[letter])
        if len(pos) == 2:
            self._set_area(params, pos[1], st, name)
        return Element(name, letter, nodes, st.loc, model=pos[0].text.upper(), params=params)

    def _set_area(self, params: dict, tok: Token, st: Statement, name: str) -> None:
        if "AREA" in params:
            raise NetlistError(f"{name}: the area is given twice", st.loc)
        params["AREA"] = self.value(tok, st, f"the area of {name}")

    def diode(self, name: str, cur: Cursor, st: Statement) -> Element:
        """``D anode cathode model [area] [off] [key=value ...]``."""
        return self._model_device(name, cur, st, "D", 2, f"{name} anode cathode model [area]", area=True)

    def bjt(self, name: str, cur: Cursor, st: Statement) -> Element:
        usage = f"{name} collector base emitter [substrate] model [area]"
        pos = self._off_flag(self.positionals(cur, st, name), name, st)
        area = None
        last = pos[-1] if pos else None
        if (
            len(pos) >= 5
            and last is not None
            and (
                last.kind in ("brace", "quote")
                or (last.kind == "word" and parse_number(last.text) is not None)
            )
        ):
            area = pos.pop()  # a trailing number is the area: 'Q1 c b e MODEL 2'
        if len(pos) not in (4, 5):
            raise NetlistError(f"{name}: expected '{usage}'", st.loc)
        nodes = [self.node(t, st, name) for t in pos[:-1]]
        if pos[-1].kind != "word":
            raise NetlistError(f"{name}: expected a model name, found '{pos[-1].text}'", st.loc)
        params = self.key_params(cur, st, name, INSTANCE_PARAMS["Q"])
        if area is not None:
            self._set_area(params, area, st, name)
        return Element(name, "Q", nodes, st.loc, model=pos[-1].text.upper(), params=params)

    def jfet(self, name: str, cur: Cursor, st: Statement) -> Element:
        """``J d g s model [area] [off] [key=value ...]`` (ngspice manual, JFETs)."""
        return self._model_device(name, cur, st, "J", 3, f"{name} drain gate source model [area]", area=True)

    def mosfet(self, name: str, cur: Cursor, st: Statement) -> Element:
        """``M d g s b model [L=] [W=] [AD= AS= PD= PS= NRD= NRS=] [m=] [off]`` (ngspice manual, MOSFETs)."""
        usage = f"{name} drain gate source bulk model [L=length] [W=width]"
        return self._model_device(name, cur, st, "M", 4, usage, area=False)

    def instance(self, name: str, cur: Cursor, st: Statement) -> Element:
        usage = f"{name} nodes... SUBCKT [params: name=value ...]"
        pos: list[Token] = []
        while not cur.at_end() and not cur.at_key() and not self._at_params_keyword(cur):
            tok = cur.next()
            assert tok is not None
            if tok.kind != "word":
                raise NetlistError(
                    f"{name}: unexpected '{st.text[tok.start : tok.end]}' (expected '{usage}')",
                    st.loc_at(tok.start),
                )
            pos.append(tok)
        self._skip_params_keyword(cur)
        if not pos:
            raise NetlistError(f"{name}: missing subcircuit name (expected '{usage}')", st.loc)
        nodes = [self.node(t, st, name) for t in pos[:-1]]
        params = self.key_params(cur, st, name, None, lower=True)
        return Element(name, "X", nodes, st.loc, model=pos[-1].text.upper(), params=params)

    @staticmethod
    def _at_params_keyword(cur: Cursor) -> bool:
        word = cur.peek_word()
        return word is not None and (word in ("params:", "params", "param:") or word.startswith("params:"))

    def _skip_params_keyword(self, cur: Cursor) -> None:
        """Consume ``params:`` (also glued to the first key, ``params:a=1``)."""
        tok = cur.peek()
        if tok is None or not self._at_params_keyword(cur):
            return
        low = tok.text.lower()
        if low.startswith("params:") and len(low) > len("params:"):
            cur.pos = tok.start + len("params:")
        else:
            cur.next()

    # ------------------------------------------------------------ dot commands
    def dot(self, word: str, cur: Cursor, st: Statement) -> None:
        if word in CONTROL_COMMANDS:
            self.netlist.controls.append(Control(st.text, st.loc))
        elif word == ".model":
            self.model(cur, st)
        elif word == ".subckt":
            self.subckt(cur, st)
        elif word == ".ends":
            self.ends(cur, st)
        elif word in (".param", ".params"):
            self.param(cur, st)
        elif word == ".func":
            pass  # collected in pass 2
        elif word == ".global":
            while not cur.at_end():
                tok = cur.next()
                assert tok is not None
                node = self.node(tok, st, ".global")
                if node != "0" and node not in self.netlist.globals:
                    self.netlist.globals.append(node)
        elif word == ".title":
            self.netlist.title = st.text.split(None, 1)[1] if len(st.text.split(None, 1)) > 1 else ""
        elif word in (".endc", ".endl"):
            raise NetlistError(
                f"'{word}' without its opening '{'.control' if word == '.endc' else '.lib'}'", st.loc
            )
        else:
            raise NetlistError(f"unknown dot command '{word}'", st.loc)

    def model(self, cur: Cursor, st: Statement) -> None:
        name_tok, type_tok = cur.next(), cur.next()
        if name_tok is None or type_tok is None or name_tok.kind != "word" or type_tok.kind != "word":
            raise NetlistError("expected '.model NAME TYPE (PARAM=VALUE ...)'", st.loc)
        name, mtype = name_tok.text.upper(), type_tok.text.upper()
        if mtype not in MODEL_TYPES:
            raise NetlistError(
                f"model type '{type_tok.text}' of model {name} is not supported "
                f"(supported: {', '.join(MODEL_TYPES)})",
                st.loc,
            )
        paren = cur.peek_is("(")
        if paren:
            cur.next()
        params: dict[str, Expr] = {}
        strings: dict[str, str] = {}
        while True:
            if paren and cur.peek_is(")"):
                cur.next()
                self.expect_end(cur, st)
                break
            if cur.at_end():
                if paren:
                    raise NetlistError(f"model {name}: missing ')'", st.loc)
                break
            if not cur.at_key():
                tok = cur.peek()
                assert tok is not None
                raise NetlistError(
                    f"model {name}: bad parameter '{st.text[tok.start : tok.end]}' (expected NAME=VALUE)",
                    st.loc_at(tok.start),
                )
            key_tok = cur.next()
            cur.next()
            assert key_tok is not None
            key = key_tok.text.upper()
            if key in params or key in strings:
                _warn(
                    f"model {name}: parameter {key} is given twice; the last value is used (as ngspice does)",
                    st.loc,
                )
            tok = cur.next()
            if tok is not None and tok.kind == "string":  # mfg="OnSemi": not a number, ngspice ignores it
                strings[key] = tok.text
                params.pop(key, None)
                continue
            strings.pop(key, None)
            params[key] = self.value(tok, st, f"the value of {key_tok.text}")
        scope = self.scope
        if name in scope.models:
            raise NetlistError(f"model {name} is defined twice (first at {scope.models[name].loc})", st.loc)
        scope.models[name] = Model(name, mtype, params, st.loc, strings)

    def subckt(self, cur: Cursor, st: Statement) -> None:
        name_tok = cur.next()
        if name_tok is None or name_tok.kind != "word":
            raise NetlistError("expected '.subckt NAME ports... [params: name=value ...]'", st.loc)
        name = name_tok.text.upper()
        ports: list[str] = []
        while not cur.at_end() and not cur.at_key() and not self._at_params_keyword(cur):
            tok = cur.next()
            assert tok is not None
            port = self.node(tok, st, f".subckt {name}")
            if port == "0":
                raise NetlistError(f".subckt {name}: ground ('{tok.text}') cannot be a port", st.loc)
            if port in ports:
                raise NetlistError(f".subckt {name}: port '{tok.text}' is listed twice", st.loc)
            ports.append(port)
        self._skip_params_keyword(cur)
        defaults = self.key_params(cur, st, f".subckt {name}", None, lower=True)
        parent = self.scope
        if name in parent.subckts:
            raise NetlistError(
                f"subcircuit {name} is defined twice (first at {parent.subckts[name].loc})", st.loc
            )
        sub = Subckt(name=name, ports=ports, defaults=defaults, loc=st.loc)
        parent.subckts[name] = sub
        self.scopes.append(sub)
        self.element_locs[id(sub)] = {}
        self.param_locs[id(sub)] = {}

    def ends(self, cur: Cursor, st: Statement) -> None:
        if len(self.scopes) == 1:
            raise NetlistError("'.ends' without '.subckt'", st.loc)
        sub = self.scopes[-1]
        assert isinstance(sub, Subckt)
        tok = cur.next()
        if tok is not None and tok.text.upper() != sub.name:
            raise NetlistError(
                f"'.ends {tok.text}' does not close '.subckt {sub.name}' (opened at {sub.loc})", st.loc
            )
        self.expect_end(cur, st)
        self.scopes.pop()

    def param(self, cur: Cursor, st: Statement) -> None:
        if cur.at_end():
            raise NetlistError("expected '.param name=value ...'", st.loc)
        locs = self.param_locs.setdefault(id(self.scope), {})
        while not cur.at_end():
            if not cur.at_key():
                tok = cur.peek()
                assert tok is not None
                raise NetlistError(
                    f".param: expected name=value, found '{st.text[tok.start : tok.end]}'",
                    st.loc_at(tok.start),
                )
            key_tok = cur.next()
            cur.next()
            assert key_tok is not None
            name = key_tok.text.lower()
            if not _IDENT.fullmatch(name):
                raise NetlistError(f".param: bad parameter name '{key_tok.text}'", st.loc)
            if name in locs:
                raise NetlistError(f"parameter '{name}' is defined twice (first at {locs[name]})", st.loc)
            expr = self.expr_value(cur, st)
            locs[name] = st.loc
            self.scope.params.append(ParamDef(name, expr, st.loc))

    # ============================================================ final checks
    def finish(self) -> None:
        if len(self.scopes) > 1:
            sub = self.scopes[-1]
            assert isinstance(sub, Subckt)
            raise NetlistError(f"subcircuit {sub.name} has no '.ends'", sub.loc)
        all_subckts: set[str] = set()
        all_models: set[str] = set()

        def gather(scope: Scope) -> None:
            all_models.update(scope.models)
            for name, sub in scope.subckts.items():
                all_subckts.add(name)
                gather(sub)

        gather(self.netlist)
        self.check_scope(self.netlist, [], all_subckts, all_models)
        self.check_top_names()

    def check_scope(
        self, scope: Scope, outer: list[Scope], all_subckts: set[str], all_models: set[str]
    ) -> None:
        chain = [scope, *outer]
        for el in scope.elements:
            if el.kind == "X":
                sub = next((s.subckts[el.model] for s in chain if el.model in s.subckts), None)
                if sub is None:
                    if el.model not in all_subckts:
                        raise NetlistError(f"{el.name}: subcircuit '{el.model}' is not defined", el.loc)
                    continue
                if len(el.nodes) != len(sub.ports):
                    raise NetlistError(
                        f"{el.name}: subcircuit {sub.name} has {len(sub.ports)} ports "
                        f"({' '.join(sub.ports)}) "
                        f"but {len(el.nodes)} node{' was' if len(el.nodes) == 1 else 's were'} given",
                        el.loc,
                    )
                for key in el.params:
                    if key not in sub.defaults and self.dialect == "ngspice":
                        known = ", ".join(sub.defaults) or "none"
                        raise NetlistError(
                            f"{el.name}: subcircuit {sub.name} has no parameter '{key}' (it has: {known}; "
                            "LTspice and PSpice pass undeclared ones: --dialect ltspice)",
                            el.loc,
                        )
            elif el.kind in ("D", "Q", "A") and el.model not in all_models:
                raise NetlistError(f"{el.name}: model '{el.model}' is not defined", el.loc)
        scope.params[:] = self.sorted_params(scope.params)
        if isinstance(scope, Subckt) and scope.defaults:  # 'params: r={2*g} g=2' works too
            loc = scope.loc or self.netlist_loc()
            order = self.sorted_params([ParamDef(k, v, loc) for k, v in scope.defaults.items()])
            scope.defaults = {p.name: p.expr for p in order}
        for sub in scope.subckts.values():
            self.check_scope(sub, chain, all_subckts, all_models)

    def netlist_loc(self) -> Loc:
        return Loc(self.path, 1)

    @staticmethod
    def sorted_params(params: list[ParamDef]) -> list[ParamDef]:
        """``.param`` definitions ordered so each comes after those it uses (ngspice allows any order)."""
        by_name = {p.name: p for p in params}
        done: dict[str, bool] = {}  # name -> finished (False while on the stack)
        out: list[ParamDef] = []

        def visit(p: ParamDef, path: list[str]) -> None:
            if done.get(p.name) is True:
                return
            if p.name in done:
                cycle = " -> ".join([*path[path.index(p.name) :], p.name])
                raise NetlistError(f"parameters depend on each other in a cycle: {cycle}", p.loc)
            done[p.name] = False
            for dep in sorted(free_names(p.expr)):
                if dep in by_name:
                    visit(by_name[dep], [*path, p.name])
            done[p.name] = True
            out.append(p)

        for p in params:
            visit(p, [])
        return out

    def check_top_names(self) -> None:
        """Names used at the top level must be top-level ``.param``s (or built-ins)."""
        top = self.netlist
        defined = {p.name for p in top.params} | _BUILTIN_NAMES

        def check(expr: Expr | None, loc: Loc) -> None:
            if expr is None:
                return
            for name in sorted(free_names(expr) - defined):
                raise NetlistError(f"undefined parameter '{name}'", loc)

        for p in top.params:
            check(p.expr, p.loc)
        for el in top.elements:
            check(el.value, el.loc)
            for expr in el.params.values():
                check(expr, el.loc)
            if el.source is not None:
                for expr in (el.source.dc, *(el.source.ac or ()), *el.source.args):
                    check(expr, el.loc)
        for m in top.models.values():
            for expr in m.params.values():
                if not isinstance(expr, Name):  # mfg=OnSemi, type=silicon: words, not parameters
                    check(expr, m.loc)


def _ltspice_powers(expr: Expr) -> Expr:
    """LTspice/PSpice ``pwr(x, y)`` = ``|x|^y``, which is ngspice's (and this package's) ``pow(x, y)``."""
    if not any(isinstance(e, Call) and e.func == "pwr" for e in walk(expr)):
        return expr

    def fix(e: Expr) -> Expr:
        e = substitute_children(e, fix)
        return Call("pow", e.args) if isinstance(e, Call) and e.func == "pwr" else e

    return fix(expr)


def substitute_children(expr: Expr, fn: Callable[[Expr], Expr]) -> Expr:
    """Apply ``fn`` to the direct children of a node (rebuilding it)."""
    if isinstance(expr, Num) or not hasattr(expr, "__dataclass_fields__"):
        return expr
    changes = {}
    for f in fields(expr):  # type: ignore[arg-type]
        val = getattr(expr, f.name)
        if isinstance(val, Expr):
            changes[f.name] = fn(val)
        elif isinstance(val, tuple) and val and isinstance(val[0], Expr):
            changes[f.name] = tuple(fn(v) for v in val)
    return replace(expr, **changes) if changes else expr  # type: ignore[type-var]


def _run(parser: _Parser, text: str) -> Netlist:
    if not text.strip():
        raise NetlistError("empty netlist (a SPICE netlist starts with a title line)", Loc(parser.path, 1))
    try:
        root = os.path.realpath(parser.path) if not parser.path.startswith("<") else parser.path
        statements = parser.read(parser.path, text, main=True, stack=((root, None),))
        parser.choose_dialect(statements)
        parser.collect_funcs(statements)
        for st in statements:
            parser.statement(st)
        parser.finish()
    except NetlistError:
        raise
    except RecursionError:
        loc = parser.st.loc if parser.st else None
        raise NetlistError("statement nested too deeply to parse", loc) from None
    except Exception as exc:  # a parser bug must still name the line
        loc = parser.st.loc if parser.st else None
        raise NetlistError(f"internal parser error ({type(exc).__name__}: {exc})", loc) from exc
    return parser.netlist


def parse_string(text: str, path: str = "<string>", dialect: str | None = None) -> Netlist:
    """Parse netlist text.  ``path`` names it in errors and is the base of relative includes.

    ``dialect`` is 'ngspice', 'ltspice' or 'pspice'; None detects LTspice from its markers
    (``.backanno``, ``wavefile=``, ``pwrs()``) and is ngspice otherwise (docs/netlists.md).
    """
    return _run(_Parser(str(path), dialect), text)


def parse_file(path: str | Path, dialect: str | None = None) -> Netlist:
    """Parse a netlist file (and the files it includes); ``dialect`` as for :func:`parse_string`."""
    name = str(path)
    try:
        text = read_text(name)
    except FileNotFoundError:
        raise NetlistError(f"netlist file '{name}' not found") from None
    except OSError as exc:
        raise NetlistError(f"cannot read netlist file '{name}': {exc.strerror or exc}") from None
    return _run(_Parser(name, dialect), text)
