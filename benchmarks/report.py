"""Shared by the benchmark scripts: writing one script's own section of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def write_section(heading: str, text: str, path: Path = BENCHMARKS) -> Path:
    """Replace the section that starts with ``heading`` (up to the next ``## ``) by ``text``, or append it."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    start = old.find(heading)
    if start < 0:
        head, tail = old.rstrip("\n") + "\n\n", ""
    else:
        nxt = old.find("\n## ", start + len(heading))
        head, tail = old[:start], ("" if nxt < 0 else old[nxt + 1:])
    path.write_text(head + text.rstrip("\n") + "\n" + ("\n" + tail if tail else ""))
    return path
