"""SPICE numbers: ``10k``, ``2.2uF``, ``1meg``, ``1e-9``, ``.5``, ``4.7µ``.

A number is an optional sign, a mantissa, an optional exponent and optional letters.  The
first letters pick the scale factor, as ngspice's ``INPevaluate``
(``src/spicelib/parser/inpeval.c``) does: ``t g meg k m u n p f`` and ``mil`` (25.4e-6), case
insensitive; ``µ``/``μ`` are micro as in LTspice.  Any other letters are units and are ignored
(``10uF``, ``2.2kOhm``, ``5V``).  So ``1F`` is one femtofarad and ``1M`` one milli-unit, as in
every SPICE.

Stricter than ngspice on purpose: digits after the letters (``4k7``) are an error, because
ngspice 39 silently reads ``4k7`` as 4k while newer versions read it as 4.7k.
"""

from __future__ import annotations

import re

#: scale factor of each SI suffix (lower case)
SUFFIXES: dict[str, float] = {
    "t": 1e12,
    "g": 1e9,
    "meg": 1e6,
    "k": 1e3,
    "m": 1e-3,
    "mil": 25.4e-6,
    "u": 1e-6,
    "µ": 1e-6,
    "μ": 1e-6,
    "n": 1e-9,
    "p": 1e-12,
    "f": 1e-15,
}

_POWERS = {"t": 12, "g": 9, "meg": 6, "k": 3, "m": -3, "u": -6, "µ": -6, "μ": -6, "n": -9, "p": -12, "f": -15}
_LETTERS = "A-Za-zµμ"
#: sign, mantissa, exponent, letters (the whole token)
NUMBER_RE = re.compile(rf"([+-]?)(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?([{_LETTERS}]*)")
#: the same at the start of an expression token (no sign: that is an operator there)
EXPR_NUMBER_RE = re.compile(rf"(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?([{_LETTERS}]*)")
_RKM_RE = re.compile(r"[+-]?\d+([A-Za-zµμ]+)\d+")


def suffix_of(letters: str) -> str:
    """The SI suffix that starts ``letters`` (lower case, '' if none): ``'kOhm'`` -> ``'k'``."""
    low = letters.lower()
    if low.startswith("meg"):
        return "meg"
    if low.startswith("mil"):
        return "mil"
    if low[:1] in SUFFIXES:
        return low[:1]
    return ""


def scale_of(letters: str) -> float:
    """Scale factor of the letters after a number (1.0 for plain units such as ``V`` or ``Ohm``)."""
    suffix = suffix_of(letters)
    return SUFFIXES[suffix] if suffix else 1.0


def value_of(mantissa: str, exponent: str | None, letters: str, sign: str = "") -> float:
    """Combine the parts matched by :data:`NUMBER_RE` into a float (volts, ohms, ... in SI units)."""
    suffix = suffix_of(letters)
    if suffix == "mil":
        x = float(mantissa + (exponent or "")) * SUFFIXES["mil"]
    else:  # one correctly rounded decimal -> float conversion: '10u' is exactly float('1e-5')
        power = (int(exponent[1:]) if exponent else 0) + (_POWERS[suffix] if suffix else 0)
        x = float(f"{mantissa}e{power}")
    return -x if sign == "-" else x


def parse_number(text: str) -> float | None:
    """The value of a SPICE number token, or ``None`` if ``text`` is not exactly one number.

    >>> parse_number("2.2k"), parse_number("10uF"), parse_number("1meg"), parse_number("4k7")
    (2200.0, 1e-05, 1000000.0, None)
    """
    m = NUMBER_RE.fullmatch(text.strip())
    if m is None:
        return None
    sign, mantissa, exponent, letters = m.groups()
    return value_of(mantissa, exponent, letters, sign)


def signed_tail(text: str) -> str | None:
    """The number ngspice 39 keeps from two numbers joined by a sign (``1-3k`` -> ``-3k``), else ``None``.

    ngspice 39 reads an R, C or L value such as ``1-3k`` as the two numbers ``1`` and ``-3k`` and keeps
    the last, sign included (a resistance of -3000 ohms; ``1.5e-3-2m`` is -2 mH, ``1u+2m`` is 2 mH;
    checked against the binary).  ``None`` where ``text`` is one number, or not exactly two so joined.
    """
    if parse_number(text) is not None:
        return None
    splits = [i for i in range(1, len(text)) if text[i] in "+-" and parse_number(text[:i]) is not None
              and parse_number(text[i:]) is not None]
    return text[splits[0]:] if len(splits) == 1 else None


def number_problem(text: str) -> str:
    """Why ``text`` is not a number, for error messages."""
    if _RKM_RE.fullmatch(text):
        m = _RKM_RE.fullmatch(text)
        assert m is not None
        head, tail = text.split(m.group(1), 1)
        return (
            f"'{text}' is ambiguous (ngspice 39 reads it as {head}{m.group(1)}, newer versions as "
            f"{head}.{tail}{m.group(1)}); write {head}.{tail}{m.group(1)}"
        )
    return f"bad number '{text}'"


def looks_numeric(text: str) -> bool:
    """Whether a token starts like a number (digit, '.', or a sign followed by one)."""
    t = text.lstrip("+-")
    return bool(t) and (t[0].isdigit() or (t[0] == "." and t[1:2].isdigit())) and len(text) - len(t) <= 1
