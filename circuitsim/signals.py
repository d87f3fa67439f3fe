"""Standard validation signals (volts): sine, logarithmic sweep, Karplus-Strong plucks.

Every signal starts at exactly 0 V and fades in (raised cosine), so a circuit at its DC
operating point for a 0 V input is the right starting state, and all of them are
band-limited to well below the Nyquist frequency of the usual simulation rates (the plucks
are synthesised at 48 kHz and resampled), so that a trapezoidal simulation at the
sample rate and ngspice see the same signal.
"""

from __future__ import annotations

import numpy as np

from circuitsim.audio import resample_to
from circuitsim.errors import UsageError

__all__ = ["fade_in", "karplus_strong", "log_sweep", "sine", "standard_signals"]


def _length(duration: float, sample_rate: float) -> int:
    if not (sample_rate > 0 and np.isfinite(sample_rate)):
        raise UsageError(f"sample_rate must be positive, got {sample_rate}")
    if not (duration > 0 and np.isfinite(duration)):
        raise UsageError(f"duration must be positive, got {duration}")
    return max(int(round(duration * sample_rate)), 2)


def fade_in(x: np.ndarray, sample_rate: float, fade: float = 1e-3) -> np.ndarray:
    """Multiply the first ``fade`` seconds by a raised cosine rising from exactly 0 to 1."""
    y = np.array(x, dtype=np.float64)
    m = min(int(round(fade * sample_rate)), len(y))
    if m > 0:
        y[:m] *= 0.5 - 0.5 * np.cos(np.pi * np.arange(m) / m)
    return y


def sine(
    freq: float, duration: float, sample_rate: float, amplitude: float = 0.5, *, fade: float = 1e-3
) -> np.ndarray:
    """``amplitude * sin(2 pi freq t)`` volts at ``t = k/sample_rate``, faded in over ``fade`` seconds."""
    n = _length(duration, sample_rate)
    t = np.arange(n) / sample_rate
    return fade_in(amplitude * np.sin(2 * np.pi * freq * t), sample_rate, fade)


def log_sweep(
    f_start: float,
    f_stop: float,
    duration: float,
    sample_rate: float,
    amplitude: float = 0.5,
    *,
    fade: float = 1e-3,
) -> np.ndarray:
    """Exponential sine sweep from ``f_start`` to ``f_stop`` hertz over ``duration`` seconds (volts).

    Instantaneous frequency ``f(t) = f_start * (f_stop/f_start)^(t/duration)`` (Farina's
    sweep); ``f_stop`` is capped at 0.45 times the sample rate.
    """
    n = _length(duration, sample_rate)
    f1 = min(float(f_stop), 0.45 * sample_rate)
    if not (0 < f_start < f1):
        raise UsageError(f"need 0 < f_start < f_stop (<= 0.45*sample_rate), got {f_start}, {f1}")
    t = np.arange(n) / sample_rate
    k = np.log(f1 / f_start)
    phase = 2 * np.pi * f_start * duration / k * np.expm1(t / duration * k)
    return fade_in(amplitude * np.sin(phase), sample_rate, fade)


def karplus_strong(
    freq: float,
    duration: float,
    sample_rate: float,
    *,
    peak: float = 1.0,
    decay: float = 0.998,
    brightness: float = 0.6,
    cutoff: float = 8000.0,
    seed: int = 0,
    internal_rate: float = 48000.0,
    fade: float = 1e-3,
) -> np.ndarray:
    """A plucked-string tone (Karplus & Strong 1983) in volts, ``peak`` volts at its largest.

    Synthesised at ``internal_rate`` (a noise burst of one period, low-passed by
    ``brightness`` in (0, 1], circulating through a delay line of one period with the
    two-point average and a loss ``decay`` per period), low-passed at ``cutoff`` hertz
    (causal 4th-order Butterworth, like a pickup and cable), then resampled to
    ``sample_rate`` with a polyphase filter.  Deterministic for a given ``seed``.
    """
    if not (0 < brightness <= 1):
        raise UsageError(f"brightness must be in (0, 1], got {brightness}")
    if not (0 < decay <= 1):
        raise UsageError(f"decay must be in (0, 1], got {decay}")
    n_out = _length(duration, sample_rate)
    n = int(np.ceil(n_out * internal_rate / sample_rate)) + 64
    period = max(int(round(internal_rate / freq - 0.5)), 2)  # the average adds half a sample of delay
    rng = np.random.default_rng(seed)
    burst = rng.uniform(-1.0, 1.0, period)
    # one-pole low-pass of the excitation: darker pluck for small brightness
    a = 1.0 - brightness
    for i in range(1, period):
        burst[i] = (1 - a) * burst[i] + a * burst[i - 1]
    burst -= burst.mean()
    # y[k] = burst[k] (k < P) + decay * (y[k-P] + y[k-P-1]) / 2, computed one period per block
    blocks = int(np.ceil(n / period)) + 1
    y = np.zeros(blocks * period + 1)
    y[1 : period + 1] = burst  # y[0] is the one-sample history before the start
    for b in range(1, blocks):
        lo = 1 + b * period
        y[lo : lo + period] = decay * 0.5 * (y[lo - period : lo] + y[lo - period - 1 : lo - 1])
    y = y[1 : n + 1]
    if cutoff < 0.5 * internal_rate:
        import scipy.signal  # here, not at module level: it costs ~30 MB and 0.6 s at start-up
        y = scipy.signal.sosfilt(scipy.signal.butter(4, cutoff, fs=internal_rate, output="sos"), y)
    if sample_rate != internal_rate:
        y = resample_to(y, internal_rate, sample_rate)
    y = fade_in(y[:n_out], sample_rate, fade)
    return y * (peak / np.max(np.abs(y)))


def standard_signals(sample_rate: float, duration: float = 0.03) -> dict[str, np.ndarray]:
    """The validation set (volts, ``duration`` seconds each at ``sample_rate``):

    - ``sine``: 440 Hz, 0.5 V;
    - ``sweep``: exponential sweep 20 Hz - 20 kHz, 0.5 V;
    - ``pluck_50mV``, ``pluck_300mV``, ``pluck_1V``: Karplus-Strong plucks (110 Hz, 196 Hz,
      82.4 Hz) at 0.05, 0.3 and 1 V peak.

    All start at 0 V with a 1 ms fade-in; all are deterministic.
    """
    return {
        "sine": sine(440.0, duration, sample_rate, 0.5),
        "sweep": log_sweep(20.0, 20000.0, duration, sample_rate, 0.5),
        "pluck_50mV": karplus_strong(110.0, duration, sample_rate, peak=0.05, seed=1),
        "pluck_300mV": karplus_strong(196.0, duration, sample_rate, peak=0.3, seed=2),
        "pluck_1V": karplus_strong(82.41, duration, sample_rate, peak=1.0, seed=3),
    }
