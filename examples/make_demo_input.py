"""Synthesise examples/demo_input.wav: about 4 s of a guitar-like DI signal at 48 kHz.

Karplus-Strong plucks (circuitsim.signals.karplus_strong) of a short riff: single notes, then
strummed E-major and A-major chords (strings a few milliseconds apart), peak 0.5 of full
scale, float32 mono.  Deterministic: running it again gives the same file.

    python examples/make_demo_input.py [--force] [-o OUT.wav]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from circuitsim.audio import AudioExistsError, write_wav
from circuitsim.signals import karplus_strong

FS = 48000
DURATION = 4.0
PEAK = 0.5

# standard tuning, MIDI note numbers: E2 A2 D3 G3 B3 E4
E_MAJOR = [40, 47, 52, 56, 59, 64]
A_MAJOR = [45, 52, 57, 61, 64]


def midi_hz(note: int) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def events() -> list[tuple[float, int, float]]:
    """(start time s, MIDI note, relative level)."""
    riff = [(0.00, 40, 1.0), (0.30, 47, 0.8), (0.55, 52, 0.8), (0.80, 55, 0.9), (1.05, 57, 0.8)]
    out = list(riff)
    for start, chord, level in ((1.40, E_MAJOR, 0.7), (2.40, A_MAJOR, 0.7), (3.20, E_MAJOR, 0.5)):
        out += [(start + 0.012 * i, n, level) for i, n in enumerate(chord)]  # a downstroke
    return out


def synthesise() -> np.ndarray:
    n = int(DURATION * FS)
    y = np.zeros(n)
    for i, (start, note, level) in enumerate(events()):
        k0 = int(round(start * FS))
        tone = karplus_strong(midi_hz(note), DURATION - start, FS, peak=level, decay=0.9985,
                              brightness=0.5, seed=100 + i)
        y[k0 : k0 + len(tone)] += tone[: n - k0]
    y *= PEAK / np.max(np.abs(y))
    y[-int(0.05 * FS):] *= np.linspace(1.0, 0.0, int(0.05 * FS))  # end at silence
    return y


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).resolve().parent / "demo_input.wav")
    ap.add_argument("--force", action="store_true", help="replace the output file if it exists")
    args = ap.parse_args(argv)
    y = synthesise()
    try:
        write_wav(args.output, y.astype(np.float32), FS, overwrite=args.force)
    except AudioExistsError:
        print(f"{args.output} already exists; use --force to replace it", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {len(y) / FS:.2f} s at {FS} Hz, peak {np.max(np.abs(y)):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
