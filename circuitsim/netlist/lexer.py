"""Physical lines -> logical statements, and a token cursor over one statement.

SPICE line rules handled here (ngspice manual, chapter 2 "Circuit description"):

- the first line of the top-level file is the title, whatever it contains;
- ``*`` starts a comment line; ``;``, ``$`` followed by a blank, and ``//`` start an
  end-of-line comment (outside double quotes);
- a line starting with ``+`` continues the previous statement (comment and blank lines
  in between are allowed);
- ``.end`` ends the file; ``.control`` ... ``.endc`` is a block kept verbatim.

A :class:`Statement` keeps its text (the physical pieces joined by one blank) and, for
every piece, where it came from, so :meth:`Statement.span` can turn a character range of
the statement back into the exact physical line and columns.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field

from circuitsim.netlist.ast import Loc, Span
from circuitsim.netlist.errors import NetlistError

_LINE_RE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n|$)")


def split_lines(text: str) -> list[str]:
    """Lines with their line endings, so that ``''.join(split_lines(t)) == t``."""
    lines = [m.group(0) for m in _LINE_RE.finditer(text)]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def strip_eol(line: str) -> str:
    return line.rstrip("\r\n")


def strip_comment(line: str) -> str:
    """The part of a line before an end-of-line comment (``;``, ``$ ``, ``//``), quotes respected."""
    quoted = False
    n = len(line)
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch == ";":
            return line[:i]
        elif ch == "$" and (i + 1 == n or line[i + 1] in " \t"):
            return line[:i]
        elif ch == "/" and i + 1 < n and line[i + 1] == "/":
            return line[:i]
    return line


def first_word(text: str) -> str:
    parts = text.split(None, 1)
    return parts[0].lower() if parts else ""


@dataclass
class Statement:
    """One logical statement (a line plus its ``+`` continuations), or a ``.control`` block."""

    text: str
    loc: Loc
    pieces: list[tuple[int, int, int]] = field(default_factory=list)  # (offset in text, line, column)
    control: bool = False  # a verbatim .control ... .endc block (text holds the raw lines)

    def add_piece(self, line: int, column: int, content: str) -> None:
        if self.text:
            self.text += " "
        self.pieces.append((len(self.text), line, column))
        self.text += content

    def where(self, offset: int) -> tuple[int, int]:
        """(physical line, column) of character ``offset`` of the statement text."""
        k = bisect_right([p[0] for p in self.pieces], offset) - 1
        start, line, col = self.pieces[max(k, 0)]
        return line, col + offset - start

    def span(self, start: int, end: int) -> Span:
        """The physical span of text[start:end] (which must not cross a line break)."""
        line, col = self.where(start)
        return Span(self.loc.file, line, col, col + (end - start))

    def loc_at(self, offset: int) -> Loc:
        """The physical line of character ``offset``, for error messages."""
        return Loc(self.loc.file, self.where(offset)[0])


def lex(file: str, lines: list[str], has_title: bool) -> tuple[str | None, list[Statement]]:
    """Split a file's lines into statements.  Returns (title or None, statements)."""
    title: str | None = None
    statements: list[Statement] = []
    start = 0
    if has_title:
        title = strip_eol(lines[0]).lstrip("\ufeff").strip() if lines else ""
        start = 1
    control: Statement | None = None
    for index in range(start, len(lines)):
        lineno = index + 1
        content = strip_eol(lines[index])
        if index == 0:
            content = content.lstrip("\ufeff")
        if control is not None:
            control.text += "\n" + content
            if first_word(content) == ".endc":
                control = None
            continue
        if content.lstrip().startswith("*"):
            continue
        code = strip_comment(content)
        body = code.lstrip()
        if not body.strip():
            continue
        column = len(code) - len(body)
        if body.startswith("+"):
            if not statements or statements[-1].control:
                raise NetlistError(
                    "continuation line '+' with no statement before it to continue", Loc(file, lineno)
                )
            rest = body[1:]
            piece = rest.strip()
            if piece:
                statements[-1].add_piece(lineno, column + 1 + len(rest) - len(rest.lstrip()), piece)
            continue
        word = first_word(body)
        if word == ".end":
            break
        if word == ".control":
            control = Statement(content, Loc(file, lineno), control=True)
            statements.append(control)
            continue
        st = Statement("", Loc(file, lineno))
        st.add_piece(lineno, column, body.rstrip())
        statements.append(st)
    if control is not None:
        raise NetlistError("'.control' block has no '.endc'", control.loc)
    return title, statements


# ---------------------------------------------------------------- tokens

_SEPARATORS = " \t,"
_SPECIAL = "=(){}'\""


@dataclass(frozen=True)
class Token:
    """A token of a statement.

    kind: 'word'; 'brace' (``{...}``) and 'quote' (``'...'``) expressions; 'string'
    (``"..."``); or the punctuation '=', '(', ')'.  For brace/quote/string, ``text`` is the
    inner text and ``inner`` its offsets; ``start``/``end`` always cover the whole token.
    """

    kind: str
    text: str
    start: int
    end: int
    inner: tuple[int, int] | None = None


class Cursor:
    """Reads the tokens of one statement; separators are blanks and commas."""

    def __init__(self, st: Statement, pos: int = 0):
        self.st = st
        self.text = st.text
        self.pos = pos

    def skip_separators(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _SEPARATORS:
            self.pos += 1

    def _scan(self, pos: int) -> Token | None:
        text, n = self.text, len(self.text)
        while pos < n and text[pos] in _SEPARATORS:
            pos += 1
        if pos >= n:
            return None
        ch = text[pos]
        if ch in "=()":
            return Token(ch, ch, pos, pos + 1)
        if ch == "}":
            raise NetlistError("unbalanced '}'", self.st.loc_at(pos))
        if ch == "{":
            depth = 0
            for i in range(pos, n):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        return Token("brace", text[pos + 1 : i], pos, i + 1, (pos + 1, i))
            raise NetlistError("unterminated '{' (no matching '}')", self.st.loc_at(pos))
        if ch in "'\"":
            close = text.find(ch, pos + 1)
            if close < 0:
                raise NetlistError(f"unterminated {ch}-quoted text", self.st.loc_at(pos))
            return Token(
                "quote" if ch == "'" else "string", text[pos + 1 : close], pos, close + 1, (pos + 1, close)
            )
        end = pos
        while end < n and text[end] not in _SEPARATORS and text[end] not in _SPECIAL:
            end += 1
        return Token("word", text[pos:end], pos, end)

    def peek(self, k: int = 0) -> Token | None:
        pos = self.pos
        tok = None
        for _ in range(k + 1):
            tok = self._scan(pos)
            if tok is None:
                return None
            pos = tok.end
        return tok

    def next(self) -> Token | None:
        tok = self._scan(self.pos)
        if tok is not None:
            self.pos = tok.end
        return tok

    def at_end(self) -> bool:
        return self.peek() is None

    def peek_is(self, kind: str, k: int = 0) -> bool:
        tok = self.peek(k)
        return tok is not None and tok.kind == kind

    def peek_word(self, k: int = 0) -> str | None:
        """The lower-case text of the k-th next token if it is a word."""
        tok = self.peek(k)
        return tok.text.lower() if tok is not None and tok.kind == "word" else None

    def at_key(self) -> bool:
        """Whether the next tokens are ``word =``."""
        return self.peek_is("word") and self.peek_is("=", 1)
