"""Recordings to fit: input and target volts, the knob settings they were made at, and the held-out tail."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from circuitsim.audio import AudioError, oversample, read_wav, read_wav_channels
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


def kaiser_lowpass(factor: int) -> np.ndarray:
    """Kaiser-windowed sinc (beta 10, 64 taps per phase) cut off at 1/``factor`` of Nyquist: ~100 dB stopband."""
    import scipy.signal

    return scipy.signal.firwin(64 * factor + 1, 1.0 / factor, window=("kaiser", 10.0))


class Decimator:
    """Differentiable decimation in torch for the fit's loss: linear-phase FIR, then every factor-th sample.

    The filter is :func:`kaiser_lowpass` (flat to ~90 % of the lower Nyquist frequency, about 100 dB
    stopband), zero-padded at both ends, centred (no delay), so output k is at input sample
    ``k * factor`` as in :func:`circuitsim.audio.decimate` (libsoxr, which is not differentiable).
    Only the kept outputs are computed (a strided convolution).
    """

    def __init__(self, factor: int):
        self.factor = int(factor)
        if self.factor > 1:
            h = kaiser_lowpass(self.factor)
            self.half = (len(h) - 1) // 2
            self.kernel = torch.tensor(h[::-1].copy(), dtype=torch.float64).reshape(1, 1, -1)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """(batch, time*factor) -> (batch, time) volts."""
        if self.factor == 1:
            return y
        n_out = -(-y.shape[-1] // self.factor)
        z = torch.nn.functional.conv1d(y.unsqueeze(1), self.kernel, padding=self.half, stride=self.factor)
        return z.squeeze(1)[..., :n_out]


def segments(x: np.ndarray, y: np.ndarray, length: int, burn_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut aligned (input, target) into overlapping rows of ``burn_in + length`` samples (a batch).

    Row k covers samples ``[k*length - burn_in, (k+1)*length)`` (the first row starts at 0 with no
    burn-in padding: it is padded with the first input sample); the first ``burn_in`` samples of
    every row are excluded from the loss.
    """
    n = len(x)
    rows_x, rows_y = [], []
    for start in range(0, n - length + 1, length):
        lo = start - burn_in
        if lo < 0:
            xs = np.concatenate([np.full(-lo, x[0]), x[: start + length]])
            ys = np.concatenate([np.full(-lo, y[0]), y[: start + length]])
        else:
            xs, ys = x[lo : start + length], y[lo : start + length]
        rows_x.append(xs)
        rows_y.append(ys)
    if not rows_x:
        raise UsageError(f"segments of {length} samples do not fit in {n} training samples")
    return np.stack(rows_x), np.stack(rows_y)


def upsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Band-limited oversampling of the input (volts) along the last axis."""
    return x.copy() if factor == 1 else oversample(x, factor, axis=-1)
