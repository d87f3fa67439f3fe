"""Losses for fitting component values to recordings (all in volts, float64 torch tensors).

ESR is the error-to-signal ratio of :func:`circuitsim.validate.esr` (signal energy about the
reference's first sample).  Pre-emphasis ``1 - 0.85 z^-1`` follows Wright et al., "Real-time
guitar amplifier emulation with deep learning", Appl. Sci. 10(3), 2020, Sec. 3.3.  The
A-weighting pre-emphasis (``emphasis="aw"``) follows Wright & Valimaki, "Perceptual loss
function for neural modelling of audio systems", ICASSP 2020, Sec. 2: the error and the
reference are A-weighted before the ESR is taken.  Here the filter is the analog A-weighting
of IEC 61672-1:2013 (Annex E: four real pole frequencies 20.598997, 107.65265, 737.86223 and
12194.217 Hz, four zeros at s = 0) mapped to z by the bilinear transform and normalised to
0 dB at 1 kHz; it runs as an exact IIR (scipy second-order sections) whose adjoint is the
same filter run backwards in time (for a filter started from rest, ``H^T g = flip(H flip(g))``).
The multi-resolution STFT loss (spectral convergence + log magnitude) follows Yamamoto et
al., "Parallel WaveGAN", ICASSP 2020, Sec. 2.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from circuitsim.errors import UsageError

# IEC 61672-1:2013, Annex E.2/E.3: A-weighting pole frequencies (Hz)
A_WEIGHTING_POLES_HZ = (20.598997, 107.65265, 737.86223, 12194.217)

Emphasis = float | str  # a first-order coefficient (0 = none, 0.85 typical) or "aw" (A-weighting)


def pre_emphasis(x: torch.Tensor, coeff: float = 0.85) -> torch.Tensor:
    """``x[n] - coeff * x[n-1]`` along the last axis (the first sample is kept as is)."""
    if coeff == 0:
        return x
    return torch.cat([x[..., :1], x[..., 1:] - coeff * x[..., :-1]], dim=-1)


@lru_cache(maxsize=16)
def a_weighting_sos(sample_rate: float) -> np.ndarray:
    """Second-order sections of the bilinear-transformed A-weighting filter at ``sample_rate`` hertz.

    Analog prototype (IEC 61672-1 Annex E): ``H(s) = k s^4 / ((s + w1)^2 (s + w2) (s + w3) (s + w4)^2)``
    with ``w_i = 2 pi f_i``; ``k`` makes the digital filter's gain exactly 1 at 1 kHz.
    """
    import scipy.signal

    f1, f2, f3, f4 = A_WEIGHTING_POLES_HZ
    poles = -2 * np.pi * np.array([f1, f1, f2, f3, f4, f4])
    z, p, k = scipy.signal.bilinear_zpk(np.zeros(4), poles, 1.0, float(sample_rate))
    sos = scipy.signal.zpk2sos(z, p, k)
    _, h = scipy.signal.sosfreqz(sos, worN=[1000.0], fs=float(sample_rate))
    sos[0, :3] /= abs(h[0])
    return sos


class _SosFilter(torch.autograd.Function):
    """IIR filtering (from rest) along the last axis with a fixed filter; backward = the filter reversed in time."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sos: np.ndarray) -> torch.Tensor:  # noqa: ANN001
        import scipy.signal

        ctx.sos = sos
        return torch.from_numpy(scipy.signal.sosfilt(sos, x.detach().cpu().numpy(), axis=-1)).to(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: ANN001, ANN205
        import scipy.signal

        rev = np.flip(g.detach().cpu().numpy(), axis=-1)
        gx = np.flip(scipy.signal.sosfilt(ctx.sos, rev, axis=-1), axis=-1).copy()
        return torch.from_numpy(gx).to(g), None


def a_weighting(x: torch.Tensor, sample_rate: float) -> torch.Tensor:
    """A-weighted ``x`` (volts at ``sample_rate`` hertz) along the last axis, differentiable.

    The filter starts in the steady state of the first sample (its DC gain is zero, so this is
    the filter applied to ``x - x[..., :1]`` from rest): a DC offset such as an op-amp's bias
    gives no start-up transient.
    """
    return _SosFilter.apply(x - x[..., :1], a_weighting_sos(float(sample_rate)))


def check_emphasis(emphasis: Emphasis) -> Emphasis:
    """``emphasis`` as the losses take it: a float coefficient, or ``"aw"``; a one-line ValueError otherwise."""
    if isinstance(emphasis, str):
        text = emphasis.strip().lower()
        if text in ("aw", "a", "a-weighting"):
            return "aw"
        try:
            emphasis = float(text)
        except ValueError:
            raise UsageError(f"pre-emphasis must be a coefficient such as 0.85 or 'aw' (A-weighting), got "
                             f"'{emphasis}'") from None
    return float(emphasis)


def emphasize(x: torch.Tensor, emphasis: Emphasis, sample_rate: float | None = None) -> torch.Tensor:
    """Apply the pre-emphasis ``emphasis`` (coefficient, or ``"aw"`` at ``sample_rate`` hertz) to ``x``."""
    if emphasis == "aw":
        if not sample_rate:
            raise UsageError("A-weighting pre-emphasis needs the sample rate")
        return a_weighting(x, sample_rate)
    return pre_emphasis(x, float(emphasis))


def esr_loss(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``sum((y - ref)^2) / sum((ref - ref[..., :1])^2)`` over every axis (dimensionless)."""
    signal = torch.sum((ref - ref[..., :1]) ** 2).clamp_min(1e-300)
    return torch.sum((y - ref) ** 2) / signal


def dc_loss(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Squared difference of the means relative to the reference's mean square about its first sample."""
    signal = torch.mean((ref - ref[..., :1]) ** 2).clamp_min(1e-300)
    return (torch.mean(y - ref, dim=-1) ** 2).mean() / signal


def residual(
    y: torch.Tensor, ref: torch.Tensor, emphasis: Emphasis = 0.0, sample_rate: float | None = None
) -> torch.Tensor:
    """Flat residual vector whose sum of squares is the (pre-emphasised) ESR of ``y`` against ``ref``.

    ``emphasis`` is a first-order coefficient or ``"aw"`` (A-weighting at ``sample_rate`` hertz).
    """
    if emphasis:
        y, ref = emphasize(y, emphasis, sample_rate), emphasize(ref, emphasis, sample_rate)
    signal = torch.sum((ref - ref[..., :1]) ** 2).clamp_min(1e-300)
    return ((y - ref) / torch.sqrt(signal)).reshape(-1)


def stft_loss(
    y: torch.Tensor, ref: torch.Tensor, ffts: Sequence[int] = (512, 1024, 2048), eps: float = 1e-12
) -> torch.Tensor:
    """Multi-resolution STFT loss: mean over resolutions of spectral convergence + L1 log-magnitude."""
    y2, r2 = y.reshape(-1, y.shape[-1]), ref.reshape(-1, ref.shape[-1])
    total = torch.zeros((), dtype=y.dtype)
    used = 0
    for n in ffts:
        if y2.shape[-1] < n:
            continue
        win = torch.hann_window(n, dtype=y.dtype)
        sy = torch.stft(y2, n, n // 4, window=win, return_complex=True).abs()
        sr = torch.stft(r2, n, n // 4, window=win, return_complex=True).abs()
        sc = torch.linalg.norm(sr - sy) / torch.linalg.norm(sr).clamp_min(eps)
        mag = torch.mean(torch.abs(torch.log(sr + eps) - torch.log(sy + eps)))
        total = total + sc + mag
        used += 1
    return total / max(used, 1)
