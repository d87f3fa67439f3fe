"""Excitation for distillation and held-out guitar-like test phrases (volts, at the STN rate).

Training segments (:func:`training_segments`) mix the signal families of issue 10 -- plucks,
chords, sweeps, noise bursts and silence -- at peak levels drawn uniformly in decibels from
``-40`` to ``0`` dB re ``input_volts``.  Every segment starts and ends at exactly 0 V with a
silent tail, so the teacher starts at its DC operating point and the data show decays back to
it.  :func:`guitar_phrase` is a different family (a melody of single notes and strummed chords
with other seeds, pitches and envelopes) for held-out scoring.
"""

from __future__ import annotations

import numpy as np

from circuitsim.signals import fade_in, karplus_strong, log_sweep

__all__ = ["guitar_phrase", "training_segments"]

GUITAR_LOW, GUITAR_HIGH = 82.41, 880.0  # E2 .. A5, hertz
HF_LIMIT = 21600.0  # hertz: highest sweep / noise frequency (the audio band: 0.45 fs at 48 kHz)


def _normalise(x: np.ndarray, peak: float) -> np.ndarray:
    m = float(np.max(np.abs(x)))
    return x * (peak / m) if m > 0 else x


def _fade_out(x: np.ndarray, fs: float, fade: float = 2e-3) -> np.ndarray:
    """Multiply the last ``fade`` seconds by a raised cosine falling to exactly 0."""
    m = min(int(round(fade * fs)), len(x))
    y = np.array(x, dtype=np.float64)
    if m > 0:
        y[-m:] *= 0.5 + 0.5 * np.cos(np.pi * (np.arange(m) + 1) / m)
    return y


def _pluck(rng: np.random.Generator, n: int, fs: float, freq: float | None = None) -> np.ndarray:
    f = freq if freq is not None else float(np.exp(rng.uniform(np.log(GUITAR_LOW), np.log(GUITAR_HIGH))))
    y = karplus_strong(f, n / fs, fs, decay=float(rng.uniform(0.990, 0.9995)),
                       brightness=float(rng.uniform(0.3, 1.0)), cutoff=float(rng.uniform(3000, 10000)),
                       seed=int(rng.integers(1 << 30)))
    return y[:n]


def _chord(rng: np.random.Generator, n: int, fs: float) -> np.ndarray:
    root = float(np.exp(rng.uniform(np.log(GUITAR_LOW), np.log(220.0))))
    shape = [0, 7, 12, 16, 19, 24][: int(rng.integers(3, 7))]  # an open major chord, 3..6 strings
    y = np.zeros(n)
    for i, semis in enumerate(shape):
        lag = int(i * rng.uniform(0.004, 0.02) * fs)  # strum: strings a few ms apart
        if lag < n:
            y[lag:] += _pluck(rng, n - lag, fs, root * 2 ** (semis / 12))
    return y


def _sweep(rng: np.random.Generator, n: int, fs: float) -> np.ndarray:
    f0 = float(rng.uniform(20, 200))
    y = log_sweep(f0, float(rng.uniform(2000, min(HF_LIMIT, 0.45 * fs))), n / fs, fs, 1.0)[:n]
    if rng.random() < 0.5:
        y = y[::-1].copy()  # downward sweeps too
    return y * np.hanning(n) ** 0.25


def _noise(rng: np.random.Generator, n: int, fs: float) -> np.ndarray:
    w = rng.standard_normal(n)
    lo, hi = float(rng.uniform(20, 500)), float(rng.uniform(2000, min(HF_LIMIT, 0.45 * fs)))
    import scipy.signal  # here, not at module level: it costs ~30 MB and 0.6 s at start-up
    w = scipy.signal.sosfilt(scipy.signal.butter(2, [lo, hi], btype="band", fs=fs, output="sos"), w)
    env = np.zeros(n)
    pos = 0
    while pos < n:  # bursts of 5..100 ms separated by gaps
        length = int(rng.uniform(0.005, 0.1) * fs)
        env[pos : pos + length] = np.exp(-np.arange(min(length, n - pos)) / (rng.uniform(0.2, 1.0) * length))
        pos += length + int(rng.uniform(0.0, 0.05) * fs)
    return w * scipy.signal.sosfilt(scipy.signal.butter(1, 200, fs=fs, output="sos"), env)


KINDS = {"pluck": _pluck, "chord": _chord, "sweep": _sweep, "noise": _noise}


def training_segments(
    count: int, seconds: float, fs: float, input_volts: float, *, seed: int = 0,
    level_db: tuple[float, float] = (-40.0, 0.0), tail: float = 0.05,
) -> tuple[np.ndarray, list[str]]:
    """``count`` excitation segments (count, n) in volts at ``fs`` hertz, and their kinds.

    Each is ``seconds`` long: a faded-in signal of one family at a peak of ``input_volts`` times a
    level drawn uniformly in ``level_db`` decibels, some with a silent gap in the middle, then
    ``tail`` seconds of silence.  Every fifth segment is the silence family (a short low-level
    pluck, then a long decay), so settling back to the DC point is in the data.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fs))
    quiet = int(round(tail * fs))
    names = list(KINDS)
    out = np.zeros((count, n))
    kinds = []
    for i in range(count):
        kind = "silence" if i % 5 == 4 else names[i % 4]
        peak = input_volts * 10 ** (rng.uniform(*level_db) / 20)
        if kind == "silence":
            m = int(rng.uniform(0.05, 0.2) * fs)
            y = np.zeros(n - quiet)
            y[:m] = _pluck(rng, m, fs) * np.hanning(2 * m)[m:]
        else:
            y = KINDS[kind](rng, n - quiet, fs)
            if rng.random() < 0.3:  # a gap: the circuit relaxes mid-segment
                a = int(rng.uniform(0.3, 0.6) * len(y))
                y[a : a + int(0.1 * len(y))] *= 0.0
        y = fade_in(_normalise(y, peak), fs, 1e-3)
        out[i, : n - quiet] = _fade_out(y, fs)
        kinds.append(kind)
    return out, kinds


def guitar_phrase(seconds: float, fs: float, peak: float, *, seed: int = 1000) -> np.ndarray:
    """A held-out guitar-like phrase (volts at ``fs`` hertz, ``peak`` volts at its largest).

    Alternating single notes (a pentatonic riff, low to high register) and strummed chords, a
    new event every 120..400 ms, each a Karplus-Strong pluck with its own seed, so no sample of
    it appears in :func:`training_segments`.  Ends with 50 ms of silence.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fs))
    y = np.zeros(n)
    scale = [0, 3, 5, 7, 10, 12, 15, 17, 19, 22]
    pos = 0
    end = n - int(0.05 * fs)
    while pos < end:
        length = end - pos
        if rng.random() < 0.35:
            ev = _chord(rng, length, fs)
        else:
            f = 98.0 * 2 ** (scale[int(rng.integers(len(scale)))] / 12) * (2 if rng.random() < 0.4 else 1)
            ev = _pluck(rng, length, fs, f) * rng.uniform(0.5, 1.0)
        y[pos:end] += ev
        pos += int(rng.uniform(0.12, 0.4) * fs)
    y[:end] = _fade_out(fade_in(y[:end], fs, 1e-3), fs)
    return _normalise(y, peak)
