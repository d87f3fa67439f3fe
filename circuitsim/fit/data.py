"""Recordings to fit: input and target volts, the knob settings they were made at, and the held-out tail."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from circuitsim.audio import AudioError, decimate, oversample, read_wav, read_wav_channels
from circuitsim.errors import UsageError


@dataclass
class FitData:
    """One recording: ``input`` and ``target`` in volts at ``sample_rate`` hertz.

    ``params`` are the ``.param`` knob settings (e.g. ``{"treble": 0.2}``) the recording was
    made at; the component values are shared between all recordings of a fit.  The last
    ``holdout`` fraction of the samples is never trained on and is reported separately.
    """

    input: np.ndarray
    target: np.ndarray
    sample_rate: float
    params: dict[str, float] = field(default_factory=dict)
    name: str = "data"
    holdout: float = 0.2

    def __post_init__(self) -> None:
        self.input = np.asarray(self.input, dtype=np.float64).reshape(-1)
        self.target = np.asarray(self.target, dtype=np.float64).reshape(-1)
        if len(self.input) != len(self.target):
            raise UsageError(f"{self.name}: input has {len(self.input)} samples, target {len(self.target)}")
        if len(self.input) < 16:
            raise UsageError(f"{self.name}: needs at least 16 samples, got {len(self.input)}")
        if not (0.0 <= self.holdout < 1.0):
            raise UsageError(f"holdout must be in [0, 1), got {self.holdout}")

    @property
    def split(self) -> int:
        """Index of the first held-out sample."""
        return len(self.input) - int(round(self.holdout * len(self.input)))


def load_pair(
    path: str | os.PathLike[str], params: Mapping[str, float] | None = None, *, input_volts: float = 1.0,
    target_volts: float = 1.0, holdout: float = 0.2,
) -> FitData:
    """A pair WAV: channel 0 the input, channel 1 the recorded output (scaled to volts)."""
    x, fs = read_wav_channels(path)
    if x.ndim != 2 or x.shape[1] < 2:
        raise AudioError(f"{path}: a pair file needs 2 channels (input, recorded output), got 1")
    return FitData(x[:, 0] * input_volts, x[:, 1] * target_volts, fs, dict(params or {}), str(path), holdout)


def load_input_target(
    input_path: str | os.PathLike[str], target_path: str | os.PathLike[str],
    params: Mapping[str, float] | None = None, *, input_volts: float = 1.0, target_volts: float = 1.0,
    holdout: float = 0.2,
) -> FitData:
    """Two mono WAVs at the same rate: the input and the recorded output."""
    x, fs = read_wav(input_path, channel=0)
    y, fs_y = read_wav(target_path, channel=0)
    if fs != fs_y:
        raise AudioError(f"{target_path}: sample rate {fs_y} Hz differs from the input's {fs} Hz")
    if len(x) != len(y):
        raise AudioError(f"{target_path}: {len(y)} samples, but the input {input_path} has {len(x)}")
    return FitData(x * input_volts, y * target_volts, fs, dict(params or {}), str(target_path), holdout)


# libsoxr's first output samples come from its start-up, which is not the steady filter: the
# transpose below (of the steady filter) is off there (weights up to 0.02 of the peak within the
# first 140 outputs, about 3 ms at 48 kHz; exact to 1e-12 after that, tests/test_audio.py).
START_UP_OUTPUTS = 140


@lru_cache(maxsize=8)
def _decimation_kernels(factor: int) -> tuple[np.ndarray, int]:
    """The impulse responses of :func:`circuitsim.audio.decimate` by ``factor`` (measured once).

    In steady state libsoxr's decimation is linear and periodic in time with period ``factor``:
    an impulse at input sample ``factor * i + p`` gives the output ``c_p`` shifted by ``i``.
    Returns ``(c, lag)``: ``c[p, m]`` is the response at output ``i + m - lag``.
    """
    lag = 1024  # output samples each side: more than the VHQ filter reaches (about 520 at x8)
    e = np.zeros((factor * 4 * lag, factor))
    e[factor * 2 * lag + np.arange(factor), np.arange(factor)] = 1.0  # one impulse per phase, as channels
    c = decimate(e, factor)[lag: 3 * lag].T
    return np.ascontiguousarray(c), lag


def decimation_adjoint(g: np.ndarray, factor: int, n_in: int) -> np.ndarray:
    """``D^T g`` for ``D`` = :func:`circuitsim.audio.decimate` by ``factor`` on ``n_in`` samples (last axis).

    The transpose of the steady-state filter (the signal is zero outside its ends, for ``D``
    and therefore for its transpose): exact up to libsoxr's rounding except for the weights of
    the first :data:`START_UP_OUTPUTS` outputs.
    """
    import scipy.signal

    c, lag = _decimation_kernels(factor)
    g = np.asarray(g, dtype=np.float64)
    n_i = -(-n_in // factor)
    out = np.zeros((*g.shape[:-1], n_i * factor))
    for p in range(factor):
        # (D^T g)[factor*i + p] = sum_k g[k] c[p, k - i + lag]
        full = scipy.signal.fftconvolve(g, c[p][::-1][(None,) * (g.ndim - 1)], axes=-1)
        out[..., p::factor] = full[..., 2 * lag - 1 - lag: 2 * lag - 1 - lag + n_i]
    return out[..., :n_in]


class _Decimate(torch.autograd.Function):
    """:func:`circuitsim.audio.decimate` along the last axis, with its exact transpose as the backward pass."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, factor: int) -> torch.Tensor:  # noqa: D401 - autograd signature
        ctx.factor, ctx.n_in = factor, y.shape[-1]
        return torch.from_numpy(decimate(y.detach().numpy(), factor, axis=-1))

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.from_numpy(decimation_adjoint(g.detach().numpy(), ctx.factor, ctx.n_in)), None


class Decimator:
    """The fit's decimation from the simulation rate to the recording rate: :func:`circuitsim.audio.decimate`.

    The same libsoxr filter as ``circuitsim simulate --oversample`` (so a fitted model is scored
    exactly as it will be rendered), made differentiable: the backward pass is the filter's
    transpose (:func:`decimation_adjoint`), for Adam.  (batch, time*factor) -> (batch, time) volts.
    """

    def __init__(self, factor: int):
        self.factor = int(factor)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.factor == 1 else _Decimate.apply(y, self.factor)


def upsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Band-limited oversampling of the input (volts) along the last axis."""
    return x.copy() if factor == 1 else oversample(x, factor, axis=-1)


@lru_cache(maxsize=8)
def decimation_reach(factor: int) -> int:
    """How many output samples ahead :func:`circuitsim.audio.decimate` by ``factor`` looks (its look-ahead).

    Output ``k`` depends on input samples up to ``factor * (k + reach)`` (weights below 1e-12 of
    the peak ignored); 386 at x8 with libsoxr VHQ.  0 for ``factor == 1``.
    """
    if factor == 1:
        return 0
    lag = 4096
    e = np.zeros(factor * 2 * lag)
    e[factor * lag] = 1.0
    r = np.abs(decimate(e, factor))
    return int(lag - np.nonzero(r > 1e-12 * r.max())[0][0])


@dataclass
class TrainingBatch:
    """The training part of one recording as a batch of rows for the simulation, and the targets it is scored on.

    ``x`` (rows, width * factor) is input volts at the simulation rate, cut from the
    oversampled *whole* recording (so the resampler's edges are where the recording's are, as
    when the recording was made); ``mask`` (same shape, or None) zeroes simulated output past
    the recording's end before decimation; ``target`` (rows, keep) volts at the recording rate;
    the first ``skip`` samples of every row are burn-in, not scored.  Each row runs
    ``decimation_reach`` samples past its scored part so that decimation near the row's end
    sees what it saw in the whole recording.
    """

    x: torch.Tensor
    mask: torch.Tensor | None
    target: torch.Tensor
    skip: int
    keep: int


def training_batch(x_hi: np.ndarray, y: np.ndarray, factor: int, split: int, segment: int | None,
                   burn_in: int) -> TrainingBatch:
    """Rows of ``[start - burn_in, start + length)`` (recording samples) over the first ``split`` samples.

    ``x_hi`` is the whole recording's input oversampled by ``factor``, ``y`` its whole target.
    Without ``segment`` there is one row, the whole training part from the recording's start
    (its DC operating point), whose first ``burn_in`` samples are not scored: a burn-in that
    covers slow time constants when the recording did not start from rest.  With ``segment``
    the rows start ``segment`` samples apart; the first is padded with the first input sample.
    """
    n_hi = len(x_hi)
    margin = decimation_reach(factor)
    if segment is None:
        starts, length, lead = [0], split, 0
        if burn_in >= split:
            raise UsageError(f"a burn-in of {burn_in} samples leaves nothing of the {split} training samples")
    else:
        length, lead = int(segment), int(burn_in)
        starts = list(range(0, split - length + 1, length))
    if not starts:
        raise UsageError(f"segments of {segment} samples do not fit in {split} training samples")
    width = lead + length + margin  # recording-rate samples simulated per row
    rows_x, rows_m, rows_y = [], [], []
    for s in starts:
        a, b = (s - lead) * factor, (s - lead + width) * factor
        body = x_hi[max(a, 0): min(b, n_hi)]
        pre, post = max(0, -a), max(0, b - n_hi)
        rows_x.append(np.concatenate([np.full(pre, x_hi[0]), body, np.full(post, x_hi[-1])]))
        rows_m.append(np.concatenate([np.ones(pre + len(body)), np.zeros(post)]))
        lo = s - lead
        ys = y[max(lo, 0): s + length]
        rows_y.append(np.concatenate([np.full(max(0, -lo), y[0]), ys]))
    mask = np.stack(rows_m)
    return TrainingBatch(torch.tensor(np.stack(rows_x)), None if mask.all() else torch.tensor(mask),
                         torch.tensor(np.stack(rows_y)), burn_in, lead + length)
