"""Losses for fitting component values to recordings (all in volts, float64 torch tensors).

ESR is the error-to-signal ratio of :func:`circuitsim.validate.esr` (signal energy about the
reference's first sample).  Pre-emphasis ``1 - 0.85 z^-1`` follows Wright et al., "Real-time
guitar amplifier emulation with deep learning", Appl. Sci. 10(3), 2020, Sec. 3.3.
The multi-resolution STFT loss (spectral convergence + log magnitude) follows Yamamoto et
al., "Parallel WaveGAN", ICASSP 2020, Sec. 2.3.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pre_emphasis(x: torch.Tensor, coeff: float = 0.85) -> torch.Tensor:
    """``x[n] - coeff * x[n-1]`` along the last axis (the first sample is kept as is)."""
    if coeff == 0:
        return x
    return torch.cat([x[..., :1], x[..., 1:] - coeff * x[..., :-1]], dim=-1)


def esr_loss(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``sum((y - ref)^2) / sum((ref - ref[..., :1])^2)`` over every axis (dimensionless)."""
    signal = torch.sum((ref - ref[..., :1]) ** 2).clamp_min(1e-300)
    return torch.sum((y - ref) ** 2) / signal


def dc_loss(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Squared difference of the means relative to the reference's mean square about its first sample."""
    signal = torch.mean((ref - ref[..., :1]) ** 2).clamp_min(1e-300)
    return (torch.mean(y - ref, dim=-1) ** 2).mean() / signal


def residual(y: torch.Tensor, ref: torch.Tensor, emphasis: float = 0.0) -> torch.Tensor:
    """Flat residual vector whose sum of squares is the (pre-emphasised) ESR of ``y`` against ``ref``."""
    if emphasis:
        y, ref = pre_emphasis(y, emphasis), pre_emphasis(ref, emphasis)
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
