"""Write a netlist back with some literal numbers changed (how ``circuitsim fit`` saves its result).

Only the characters of the given spans change; every other byte of every file (comments,
spacing, line endings, include files) stays as it was.  New numbers are written with the
shortest decimal that round-trips the float (``repr`` precision), keeping the original's
style: its SI suffix when the new value suits it (``10k`` -> ``12.3456789k``), its unit
letters (``10uF`` -> ``12.5uF``), plain decimals for plain decimals.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from decimal import Decimal

from circuitsim.errors import UsageError
from circuitsim.netlist.ast import Netlist, Span
from circuitsim.netlist.units import NUMBER_RE, SUFFIXES, parse_number, suffix_of

_AUTO_SUFFIXES = {12: "t", 9: "g", 6: "meg", 3: "k", 0: "", -3: "m", -6: "u", -9: "n", -12: "p", -15: "f"}
_RTOL = 1e-12


def _scaled(value: float, exp3: int) -> str:
    """|value| / 10**exp3 as an exact short decimal (the digits of repr(value), shifted)."""
    d = Decimal(repr(abs(value))).scaleb(-exp3).normalize()
    return format(d, "f")


def _roundtrips(text: str, value: float) -> bool:
    got = parse_number(text)
    return got is not None and (got == value or abs(got - value) <= _RTOL * abs(value))


def format_value(value: float, original: str = "") -> str:
    """``value`` written as a SPICE number in the style of the literal ``original``.

    >>> format_value(2213.456789, "2.2k"), format_value(1.5e-8, "10nF"), format_value(0.6, "0.568")
    ('2.213456789k', '15nF', '0.6')
    """
    if not math.isfinite(value):
        raise UsageError(f"cannot write {value} into a netlist")
    sign = "-" if value < 0 else ""
    m = NUMBER_RE.fullmatch(original.strip())
    letters = m.group(4) if m else ""
    had_exponent = bool(m and m.group(3))
    suffix = suffix_of(letters)
    written_suffix = letters[: len(suffix)] if suffix and suffix != "mil" else ""
    unit = letters[len(suffix) :] if suffix else letters
    mag = abs(value)

    text = None
    if value == 0:
        text = "0" + written_suffix
    elif written_suffix:
        exp3 = round(math.log10(SUFFIXES[suffix]))
        if 0.1 <= mag / 10.0**exp3 < 1e4:
            text = sign + _scaled(value, exp3) + written_suffix
    elif not had_exponent and 1e-3 <= mag < 1e6:
        text = sign + _scaled(value, 0)
    elif had_exponent:
        text = repr(value)
    if text is None:  # choose the SI suffix that puts the mantissa in [1, 1000)
        exp3 = max(-15, min(12, 3 * math.floor(math.log10(mag) / 3)))
        text = sign + _scaled(value, exp3) + _AUTO_SUFFIXES[exp3] if 1e-15 <= mag < 1e15 else repr(value)
    for candidate in (text + unit, text, repr(value)):
        if _roundtrips(candidate, value):
            return candidate
    raise UsageError(f"cannot format {value!r}")  # pragma: no cover - repr always round-trips


def rewrite_values(netlist: Netlist, new_values: Mapping[Span, float]) -> dict[str, str]:
    """New text of every source file of ``netlist`` with the literals at ``new_values``'s spans replaced.

    The returned dict has one entry per file in ``netlist.sources`` (main file and includes),
    keyed like :attr:`Span.file`; files without changes come back unchanged.
    """
    texts = {f: list(lines) for f, lines in netlist.sources.items()}
    by_line: dict[tuple[str, int], list[tuple[Span, float]]] = defaultdict(list)
    for span, value in new_values.items():
        if span.file not in texts:
            raise UsageError(f"{span.file}: not a source file of this netlist")
        if not 1 <= span.line <= len(texts[span.file]):
            raise UsageError(f"{span.file}:{span.line}: no such line")
        by_line[(span.file, span.line)].append((span, float(value)))
    for (file, line), items in by_line.items():
        raw = texts[file][line - 1]
        content = raw.rstrip("\r\n")
        ending = raw[len(content) :]
        items.sort(key=lambda item: item[0].start)
        for (a, _), (b, _) in zip(items, items[1:]):
            if b.start < a.end:
                raise UsageError(f"{file}:{line}: overlapping spans")
        for span, value in reversed(items):
            old = content[span.start : span.end]
            if parse_number(old) is None:
                raise UsageError(f"{file}:{line}: '{old}' at columns {span.start}-{span.end} is not a number")
            new = format_value(value, old)
            before = content[: span.start].rstrip()
            if new.startswith("-") and before[-1:] in ("+", "-", "*", "/", "^"):
                new = f"({new})"  # inside an expression: 2*-3 would read fine, 2--3 less so
            content = content[: span.start] + new + content[span.end :]
        texts[file][line - 1] = content + ending
    return {file: "".join(lines) for file, lines in texts.items()}
