"""Distortion measurements of a nonlinear circuit: transfer curve, THD against level, aliasing, ESS.

Every measurement renders audio through the same path as ``circuitsim simulate``
(:func:`circuitsim.api.render`: up-sample, the compiled DK circuit, down-sample) and reads the
result with a DFT, so what is measured is what a user hears.

* :func:`transfer_curve`: the DC operating point's output against a DC input (a DC sweep, as
  ngspice ``.dc`` would give); for an AC-coupled circuit (flat DC curve) the dynamic curve
  ``y(x)`` over the last period of a 200 Hz sine is reported instead.
* :func:`thd_against_level`: a 1 kHz sine at each level, 100 periods after 0.25 s of settling, a
  rectangular-window DFT whose bins fall exactly on the harmonics; THD
  ``sqrt(sum_{k>=2} A_k^2) / A_1`` over the harmonics below Nyquist.
* :func:`aliasing_report`: a 1245 Hz sine at a clipping level, rendered at each oversampling
  factor; in the output spectrum (Kaiser window, beta 24) the energy within +-12 bins of the
  harmonics ``k f0`` is "harmonic", everything else above 20 Hz is "aliased" (the harmonics
  above the simulation rate's Nyquist fold back onto non-harmonic frequencies, since 1245 Hz
  does not divide 48 kHz); the ratio in dB, and the wall time of the render (best of 3: up-sampling,
  circuit, down-sampling) in ns per audio sample.
* :func:`ess_harmonics`: Farina's exponential sine sweep (AES 108th Convention, 2000,
  "Simultaneous measurement of impulse response and distortion with a swept-sine technique"),
  in its synchronised form (Novák, Lotton & Simon, JAES 63(10), 2015): with
  ``phi(t) = 2 pi f1 L e^{t/L}`` and ``L`` chosen so that ``f1 L`` is an integer, ``k phi(t) =
  phi(t + L ln k)``, so deconvolving the output by the sweep puts the k-th harmonic's impulse
  response at ``t = -L ln k``; its spectrum at ``k f`` is the k-th harmonic's amplitude per volt
  of sweep amplitude at excitation frequency ``f``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuitsim.errors import UsageError


def _load(netlist: str | Path, rate: float, params: Mapping[str, float] | None, input_source: str,
          output_node: str, method: str = "dk"):  # noqa: ANN202
    from circuitsim.api import load

    return load(netlist, method, rate, params=params, input_source=input_source, output_node=output_node)


def _render(model, x: np.ndarray, oversample: int) -> np.ndarray:  # noqa: ANN001
    from circuitsim.api import render

    return render(model, x, oversample=oversample)


# ---------------------------------------------------------------- static transfer curve


@dataclass
class TransferCurve:
    input_v: np.ndarray
    output_v: np.ndarray
    kind: str  # "dc" (operating points) or "dynamic" (y against x over one period of a sine)


def transfer_curve(netlist: str | Path, *, params: Mapping[str, float] | None = None, input_source: str = "VIN",
                   output_node: str = "out", v_max: float = 2.0, points: int = 201, sample_rate: float = 48000.0,
                   oversample: int = 8) -> TransferCurve:
    """Output volts against input volts over ``[-v_max, v_max]``: DC sweep, or the dynamic curve if AC-coupled."""
    model = _load(netlist, sample_rate * oversample, params, input_source, output_node)
    u = torch.linspace(-v_max, v_max, points, dtype=torch.float64)
    with torch.no_grad():
        x, _ = model.operating_point(u)
        y = (x @ model.matrices().out).numpy()
    if np.ptp(y) > 1e-3 * 2 * v_max:
        return TransferCurve(u.numpy(), y, "dc")
    f0, periods = 200.0, 12  # AC-coupled: the steady-state loop of a sine, last period
    n = int(round(periods * sample_rate / f0))
    t = np.arange(n) / sample_rate
    xs = v_max * np.sin(2 * np.pi * f0 * t)
    ys = _render(model, xs, oversample)
    last = slice(n - int(round(sample_rate / f0)), n)
    return TransferCurve(xs[last], ys[last] - np.mean(ys[last]), "dynamic")


# ---------------------------------------------------------------- THD against level


@dataclass
class HarmonicLevels:
    input_v: np.ndarray  # sine amplitudes (volts)
    harmonics_v: np.ndarray  # (levels, K) output amplitude of harmonics 1..K (volts)
    f0: float

    @property
    def thd(self) -> np.ndarray:
        """``sqrt(sum_{k>=2} A_k^2) / A_1`` per level (ratio)."""
        return np.sqrt(np.sum(self.harmonics_v[:, 1:] ** 2, axis=1)) / np.maximum(self.harmonics_v[:, 0], 1e-300)


def _harmonic_amplitudes(y: np.ndarray, cycles: int, k_max: int) -> np.ndarray:
    """Amplitudes of harmonics 1..k_max of a signal holding exactly ``cycles`` periods (rectangular DFT)."""
    spec = np.fft.rfft(y) * 2.0 / len(y)
    ks = np.arange(1, k_max + 1) * cycles
    return np.abs(spec[ks[ks < len(spec)]])


def thd_against_level(netlist: str | Path, levels_v: Sequence[float], *, params: Mapping[str, float] | None = None,
                      input_source: str = "VIN", output_node: str = "out", f0: float = 1000.0,
                      sample_rate: float = 48000.0, oversample: int = 8, k_max: int = 10) -> HarmonicLevels:
    """Harmonic amplitudes (volts) of the steady-state output for a sine of each amplitude in ``levels_v``."""
    cycles, settle = 100, 0.25
    if abs(sample_rate * cycles / f0 - round(sample_rate * cycles / f0)) > 1e-9:
        raise UsageError(f"{cycles} periods of {f0:g} Hz must be a whole number of samples at {sample_rate:g} Hz")
    k_max = min(k_max, int((sample_rate / 2 - 1) // f0))
    n_win = int(round(sample_rate * cycles / f0))
    n = int(round(settle * sample_rate)) + n_win
    t = np.arange(n) / sample_rate
    model = _load(netlist, sample_rate * oversample, params, input_source, output_node)
    rows = []
    for a in levels_v:
        y = _render(model, float(a) * np.sin(2 * np.pi * f0 * t), oversample)
        rows.append(_harmonic_amplitudes(y[-n_win:], cycles, k_max))
    return HarmonicLevels(np.asarray(levels_v, dtype=np.float64), np.array(rows), f0)


# ---------------------------------------------------------------- aliasing


@dataclass
class AliasingRow:
    oversample: int
    aliased_db: float  # non-harmonic energy relative to the harmonic energy (dB)
    ns_per_sample: float  # wall time of the render per audio-rate sample


def _band_energies(y: np.ndarray, fs: float, f0: float, half_width: int = 12) -> tuple[float, float]:
    """(harmonic, non-harmonic) energy of ``y`` above 20 Hz and DC's main lobe; Kaiser window (beta 24)."""
    import scipy.signal  # here, not at module level: it costs ~30 MB and 0.6 s at start-up
    w = scipy.signal.windows.kaiser(len(y), 24.0)
    p = np.abs(np.fft.rfft(y * w)) ** 2
    f = np.fft.rfftfreq(len(y), 1.0 / fs)
    df = f[1]
    harmonic = np.zeros(len(p), dtype=bool)
    for k in range(1, int(f[-1] // f0) + 1):
        harmonic |= np.abs(f - k * f0) <= half_width * df
    valid = f >= max(20.0, (half_width + 1) * df)  # DC (a biased output) and its window main lobe left out
    return float(np.sum(p[valid & harmonic])), float(np.sum(p[valid & ~harmonic]))


def aliasing_report(netlist: str | Path, *, params: Mapping[str, float] | None = None, input_source: str = "VIN",
                    output_node: str = "out", f0: float = 1245.0, amplitude: float = 1.0,
                    factors: Sequence[int] = (1, 2, 4, 8, 16), sample_rate: float = 48000.0,
                    settle: float = 0.3, window: float = 0.25, repeats: int = 3) -> list[AliasingRow]:
    """Aliased (non-harmonic) energy relative to the harmonics, and the render cost, per oversampling factor."""
    from circuitsim.signals import sine

    n_win = int(round(window * sample_rate))
    x = sine(f0, settle + window, sample_rate, amplitude, fade=0.01)
    rows = []
    for n in factors:
        model = _load(netlist, sample_rate * n, params, input_source, output_node)
        _render(model, x[: int(0.01 * sample_rate)], n)  # compile / load the kernel outside the timing
        dt = np.inf
        for _ in range(repeats):  # best of a few: the machine's other load only ever adds time
            t0 = time.perf_counter()
            y = _render(model, x, n)
            dt = min(dt, time.perf_counter() - t0)
        h, a = _band_energies(y[-n_win:], sample_rate, f0)
        rows.append(AliasingRow(int(n), 10 * np.log10(max(a, 1e-300) / h), 1e9 * dt / len(x)))
    return rows


# ---------------------------------------------------------------- exponential sine sweep


@dataclass
class ESSResult:
    frequency_hz: np.ndarray  # excitation frequencies
    harmonics: np.ndarray  # (K, F) complex: k-th harmonic response at excitation frequency f (V per V of sweep)
    amplitude: float


def synchronized_sweep(f1: float, f2: float, duration: float, sample_rate: float) -> tuple[np.ndarray, float]:
    """Novák et al.'s synchronised exponential sweep ``sin(2 pi f1 L e^{t/L})``: (samples, L in seconds)."""
    L = max(round(f1 * duration / np.log(f2 / f1)), 1) / f1  # f1 L integer: k phi(t) = phi(t + L ln k)
    t = np.arange(int(round(L * np.log(f2 / f1) * sample_rate))) / sample_rate
    return np.sin(2 * np.pi * f1 * L * np.exp(t / L)), L


def _edge_window(pre: int, post: int) -> np.ndarray:
    """Flat window over ``[-pre, post)`` with half-Hann edges over the outer half of ``pre`` and of ``post``."""
    w = np.ones(pre + post)
    a, b = pre // 2, post // 2
    w[:a] = 0.5 - 0.5 * np.cos(np.pi * np.arange(a) / max(a, 1))
    if b:
        w[len(w) - b:] = 0.5 + 0.5 * np.cos(np.pi * np.arange(b) / b)
    return w


def ess_harmonics(netlist: str | Path, *, params: Mapping[str, float] | None = None, input_source: str = "VIN",
                  output_node: str = "out", amplitude: float = 0.3, f1: float = 20.0, f2: float = 20000.0,
                  duration: float = 2.0, sample_rate: float = 48000.0, oversample: int = 8, k_max: int = 5,
                  frequencies: np.ndarray | None = None) -> ESSResult:
    """Harmonic responses 1..k_max by a synchronised exponential sine sweep of ``amplitude`` volts."""
    sweep, L = synchronized_sweep(f1, f2, duration, sample_rate)
    fade = int(0.005 * sample_rate)  # short fades against the clicks at the ends of the sweep
    win = np.ones(len(sweep))
    win[:fade] = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    win[-fade:] = win[:fade][::-1]
    x = amplitude * sweep * win
    tail = int(0.5 * sample_rate)
    model = _load(netlist, sample_rate * oversample, params, input_source, output_node)
    y = _render(model, np.concatenate([x, np.zeros(tail)]), oversample)
    y = y - y[0]  # the DC operating point carries no signal
    nfft = 1 << int(np.ceil(np.log2(2 * len(y))))
    X = np.fft.rfft(x, nfft)
    Y = np.fft.rfft(y, nfft)
    f_bins = np.fft.rfftfreq(nfft, 1.0 / sample_rate)
    band = (f_bins >= f1) & (f_bins <= f2)
    H = np.where(band, Y * np.conj(X) / np.maximum(np.abs(X) ** 2, 1e-30), 0.0)
    h = np.fft.irfft(H, nfft)  # harmonic k's impulse response sits at t = -L ln k (wrapped)
    # away from the sweep's ends, where its fades and the band edge of the deconvolution sit
    f = np.geomspace(2 * f1, f2 / 2, 200) if frequencies is None else np.asarray(frequencies, dtype=np.float64)
    out = np.zeros((k_max, len(f)), dtype=complex)
    fk = np.fft.rfftfreq(nfft, 1.0 / sample_rate)
    for k in range(1, k_max + 1):
        centre = -int(round(L * np.log(k) * sample_rate))  # harmonic k's impulse, wrapped modulo nfft
        pre = int(round(0.5 * L * np.log((k + 1) / k) * sample_rate))  # half-way to harmonic k+1
        # after it: half-way to harmonic k-1, or (linear part) up to where the wrapped harmonics begin
        post = int(round(0.5 * L * np.log(k / (k - 1)) * sample_rate)) if k > 1 else int(nfft - 1.05 * len(x))
        idx = np.arange(-pre, post)
        seg = h[np.mod(centre + idx, nfft)] * _edge_window(pre, post)
        resp = np.fft.rfft(seg, nfft) * np.exp(2j * np.pi * fk * pre / sample_rate)  # undo the pre samples' delay
        fo = k * f  # the k-th harmonic of excitation f lies at k f
        ok = fo < 0.9 * min(f2, 0.5 * sample_rate)
        out[k - 1, ok] = np.interp(fo[ok], fk, resp.real) + 1j * np.interp(fo[ok], fk, resp.imag)
        out[k - 1, ~ok] = np.nan
    return ESSResult(f, out, amplitude)


__all__ = [
    "AliasingRow",
    "ESSResult",
    "HarmonicLevels",
    "TransferCurve",
    "aliasing_report",
    "ess_harmonics",
    "synchronized_sweep",
    "thd_against_level",
    "transfer_curve",
]
