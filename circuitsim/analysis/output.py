"""Listenable output for ``circuitsim simulate``: DC blocking, gain, normalisation, default oversampling.

The simulator's contract is the node voltage in volts, never silently changed; these are the
explicit, opt-in steps a user asks for to turn that voltage into audio a player can play:

* :class:`DCBlocker`: a first-order high-pass ``H(s) = s / (s + 2 pi fc)`` by the bilinear
  transform (default ``fc = 5 Hz``), started from the first output sample's value so the
  biased DC (a pedal's 4.5 V) is removed from sample 0 on, without a thump;
* a gain in dB, and peak normalisation to a level in dBFS (which needs the whole output:
  :func:`normalise` works on a buffer in memory);
* :func:`default_oversample`: 1x for linear circuits, 8x for nonlinear ones;
* :func:`oversampling_latency`: the real-time latency of the up/down-sampling filters that
  :func:`circuitsim.api.process_stream` uses, *measured* by streaming through them (so it
  stays right if the resampler is replaced).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator

import numpy as np

from circuitsim.circuit.circuit import Circuit
from circuitsim.errors import UsageError

DEFAULT_AC_COUPLE_HZ = 5.0  # well below the lowest guitar note (E2, 82 Hz): -0.02 dB there
DEFAULT_NORMALIZE_DBFS = -1.0
LINEAR_OVERSAMPLE = 1
NONLINEAR_OVERSAMPLE = 8


class DCBlocker:
    """Streaming first-order DC-blocking high-pass at ``cutoff_hz`` for a signal at ``sample_rate`` Hz.

    Bilinear transform of ``H(s) = s / (s + wc)`` with the cutoff prewarped,
    ``K = tan(pi fc / fs)``: ``H(z) = g (1 - z^-1) / (1 - a z^-1)`` with ``g = 1 / (1 + K)``,
    ``a = (1 - K) / (1 + K)``, i.e. ``y[n] = a y[n-1] + g (x[n] - x[n-1])``; unity gain at Nyquist.
    The filter starts in the steady state of a constant input equal to the first sample
    (``x[-1] = x[0]``, ``y[-1] = 0``): the output starts at 0 V instead of stepping from the
    bias, so there is no thump.
    """

    def __init__(self, cutoff_hz: float, sample_rate: float):
        if not (cutoff_hz > 0 and math.isfinite(cutoff_hz)):
            raise UsageError(f"--ac-couple cutoff must be a positive number of hertz, got {cutoff_hz}")
        if cutoff_hz >= sample_rate / 2:
            raise UsageError(f"--ac-couple cutoff {cutoff_hz:g} Hz must be below half the sample rate "
                             f"({sample_rate / 2:g} Hz)")
        k = math.tan(math.pi * cutoff_hz / sample_rate)
        a, g = (1.0 - k) / (1.0 + k), 1.0 / (1.0 + k)
        self.b = np.array([g, -g])
        self.a = np.array([1.0, -a])
        self.zi: np.ndarray | None = None

    def process(self, x: np.ndarray) -> np.ndarray:
        """Filter the next block (volts); the state carries over between blocks."""
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0:
            return x
        if self.zi is None:
            # direct form II transposed state for x[-1] = x[0], y[-1] = 0: z = b1 x[-1] - a1 y[-1]
            self.zi = np.array([self.b[1] * x[0]])
        import scipy.signal  # here, not at module level: it costs ~30 MB and 0.6 s at start-up
        y, self.zi = scipy.signal.lfilter(self.b, self.a, x, zi=self.zi)
        return y


def db_to_gain(db: float) -> float:
    """Amplitude ratio of ``db`` decibels."""
    return 10.0 ** (float(db) / 20.0)


def listenable(blocks: Iterable[np.ndarray], sample_rate: float, ac_couple_hz: float | None = None,
               gain_db: float = 0.0) -> Iterator[np.ndarray]:
    """Apply the streaming steps (DC blocking at ``ac_couple_hz``, then ``gain_db``) to output blocks (volts)."""
    blocker = DCBlocker(ac_couple_hz, sample_rate) if ac_couple_hz is not None else None
    gain = db_to_gain(gain_db)
    for y in blocks:
        if blocker is not None:
            y = blocker.process(y)
        yield y * gain if gain != 1.0 else y


def normalise(y: np.ndarray, dbfs: float = DEFAULT_NORMALIZE_DBFS) -> tuple[np.ndarray, float]:
    """Scale ``y`` so its peak is ``dbfs`` dB relative to full scale (1.0); returns (scaled, gain in dB)."""
    if not (math.isfinite(dbfs) and dbfs <= 0):
        raise UsageError(f"--normalize level must be a number of dBFS <= 0, got {dbfs}")
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    if peak == 0.0:
        return y, 0.0
    g = db_to_gain(dbfs) / peak
    return y * g, 20.0 * math.log10(g)


def playback_note(mean: float, peak: float, ac_coupled: bool) -> str | None:
    """One line for the user when the written output would clip a player (``|mean| > 1`` V or ``peak > 1``)."""
    if abs(mean) <= 1.0 and peak <= 1.0:
        return None
    what = f"DC {mean:+.3g} V" if abs(mean) > 1.0 else f"peak {peak:.3g}"
    if not ac_coupled and abs(mean) > 0.1 * peak:
        fix = "add --ac-couple to remove the DC (and --normalize to set the level)"
    elif not ac_coupled:
        fix = "add --normalize (or --gain-db) to bring the level below full scale, --ac-couple for any DC"
    else:
        fix = "add --normalize (or --gain-db) to bring the level below full scale"
    return f"note: the output ({what}) would clip a player, which plays volts as full-scale units; {fix}"


_LINEAR_KINDS = frozenset("RCLVIFHK")  # and E/G without VALUE=: every other element may be nonlinear


def is_nonlinear(circuit: Circuit) -> bool:
    """True unless every element is linear (R C L V I F H K, E/G without VALUE=); devices and B sources are not."""
    for el in circuit.elements:
        if el.kind in ("E", "G"):
            if "VALUE" in el.params:
                return True
        elif el.kind not in _LINEAR_KINDS:
            return True
    return False


def default_oversample(circuit: Circuit) -> int:
    """The oversampling factor ``simulate`` uses when none is given: 1 (linear) or 8 (nonlinear, against aliasing)."""
    return NONLINEAR_OVERSAMPLE if is_nonlinear(circuit) else LINEAR_OVERSAMPLE


class _Identity:
    """A stand-in circuit for :func:`oversampling_latency`: output = input."""

    def stream(self, x, state):  # noqa: ANN001, ANN201 - same protocol as AbstractCircuitModule.stream
        return x, state


@functools.cache
def oversampling_latency(factor: int, block: int = 32, n_blocks: int = 256) -> int:
    """Latency in input-rate samples of oversampling by ``factor`` in a real-time (block) stream.

    Measured, not assumed: blocks of ``block`` samples go through the same up-sampler and
    down-sampler as :func:`circuitsim.api.process_stream` (with an identity in place of the
    circuit), and the latency is how many input samples have gone in but not yet come out,
    once that has settled.  The offline output is aligned (zero delay); a live stream would
    lag by this much.
    """
    from circuitsim.api import process_stream

    if factor <= 1:
        return 0
    n_in = n_out = 0
    gen = process_stream(_Identity(), iter(np.zeros(block) for _ in range(n_blocks)), factor)
    lags = []
    for y in gen:
        if n_in < block * n_blocks:
            n_in += block
            n_out += len(y)
            lags.append(n_in - n_out)
    return int(max(lags[len(lags) // 2:]))  # the settled part; the worst block


def latency_ms(factor: int, sample_rate: float = 48000.0) -> float:
    """:func:`oversampling_latency` in milliseconds at ``sample_rate`` hertz."""
    return 1e3 * oversampling_latency(int(factor)) / float(sample_rate)


__all__ = [
    "DCBlocker",
    "DEFAULT_AC_COUPLE_HZ",
    "DEFAULT_NORMALIZE_DBFS",
    "db_to_gain",
    "default_oversample",
    "is_nonlinear",
    "latency_ms",
    "listenable",
    "normalise",
    "oversampling_latency",
    "playback_note",
]
