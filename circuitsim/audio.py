"""WAV input/output and polyphase resampling.

Samples are float64 in full-scale units ([-1, 1] for integer PCM, as soundfile scales them);
what a sample means in volts is the caller's business (the CLI's ``--input-volts``).
Written files are IEEE float (32-bit by default), never normalised or clipped.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf

__all__ = [
    "AudioError",
    "AudioExistsError",
    "decimate",
    "oversample",
    "read_wav",
    "read_wav_channels",
    "resample",
    "resample_to",
    "write_wav",
]

_WAV_FORMATS = ("WAV", "WAVEX", "RF64")


class AudioError(ValueError):
    """A WAV file that cannot be used; the message names the file and what is wrong (one line)."""


class AudioExistsError(AudioError, FileExistsError):
    """Refusing to overwrite an existing file without ``overwrite=True``."""


def _open_info(path: Path) -> sf._SoundFileInfo:
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not a WAV file")
    try:
        info = sf.info(str(path))
    except Exception as e:  # noqa: BLE001 - libsndfile reports every problem as a RuntimeError variant
        msg = str(e).splitlines()[-1] if str(e) else type(e).__name__
        raise AudioError(f"{path}: not a readable WAV file ({msg.strip()})") from None
    if info.format not in _WAV_FORMATS:
        raise AudioError(f"{path}: not a WAV file (it is {info.format_info or info.format})")
    if info.frames == 0:
        raise AudioError(f"{path}: contains no samples (zero length)")
    return info


def read_wav_channels(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read every channel: ``(samples[frames, channels] float64 in full-scale units, sample_rate)``."""
    p = Path(path)
    _open_info(p)
    try:
        data, fs = sf.read(str(p), dtype="float64", always_2d=True)
    except Exception as e:  # noqa: BLE001
        raise AudioError(f"{p}: cannot read samples ({str(e).strip()})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{p}: contains no samples (zero length)")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{p}: contains NaN or infinite samples")
    return np.ascontiguousarray(data), int(fs)


def read_wav(path: str | os.PathLike[str], *, channel: int | None = None) -> tuple[np.ndarray, int]:
    """Read a mono WAV (or one ``channel`` of a multichannel one) as float64 in [-1, 1] units.

    Integer PCM (8/16/24/32-bit) is scaled by soundfile to [-1, 1); float WAVs are returned
    as stored.  Returns ``(samples, sample_rate_hz)``.  A multichannel file without
    ``channel=`` is an error (use :func:`read_wav_channels` for all channels).
    """
    p = Path(path)
    info = _open_info(p)
    if channel is None and info.channels != 1:
        raise AudioError(
            f"{p}: has {info.channels} channels but a mono signal is needed "
            f"(pass channel=0..{info.channels - 1} or use read_wav_channels)"
        )
    if channel is not None and not (0 <= channel < info.channels):
        raise AudioError(f"{p}: has {info.channels} channel(s), channel {channel} does not exist")
    data, fs = read_wav_channels(p)
    return np.ascontiguousarray(data[:, 0 if channel is None else channel]), fs


def write_wav(
    path: str | os.PathLike[str],
    data: np.ndarray,
    sample_rate: int,
    *,
    overwrite: bool = False,
    subtype: str = "FLOAT",
) -> None:
    """Write ``data`` (``[frames]`` or ``[frames, channels]``) as an IEEE-float WAV.

    ``subtype`` is ``"FLOAT"`` (32-bit, default) or ``"DOUBLE"`` (64-bit); integer subtypes
    (``"PCM_16"``, ``"PCM_24"``) are accepted for demo files and clip at full scale.
    Values are written as given (no normalisation).  An existing file is only replaced
    with ``overwrite=True`` (else :class:`AudioExistsError`).
    """
    p = Path(path)
    x = np.asarray(data, dtype=np.float64)
    if x.ndim not in (1, 2) or x.shape[0] == 0:
        raise AudioError(f"{p}: data to write must be a non-empty [frames] or [frames, channels] array, "
                         f"got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{p}: data to write contains NaN or infinite values")
    fs = int(round(sample_rate))
    if fs <= 0 or abs(fs - float(sample_rate)) > 1e-9 * fs:
        raise AudioError(f"{p}: WAV sample rate must be a positive whole number of hertz, got {sample_rate}")
    if p.exists() and not overwrite:
        raise AudioExistsError(f"{p}: already exists (pass overwrite=True to replace it)")
    try:
        sf.write(str(p), x, fs, subtype=subtype, format="WAV")
    except Exception as e:  # noqa: BLE001
        raise AudioError(f"{p}: cannot write WAV ({str(e).strip()})") from None


# ---------------------------------------------------------------- resampling


def _lowpass(up: int, down: int) -> np.ndarray:
    """Kaiser-windowed sinc for rate change up/down: cutoff at the lower Nyquist, about 100 dB stopband."""
    m = max(up, down)
    half_len = 32 * m
    return scipy.signal.firwin(2 * half_len + 1, 1.0 / m, window=("kaiser", 10.0))


def resample(x: np.ndarray, up: int, down: int, axis: int = 0) -> np.ndarray:
    """Change the sample rate by ``up/down`` with a linear-phase polyphase filter (no delay).

    The anti-aliasing/anti-imaging filter is a Kaiser-windowed sinc (beta 10, 64 taps per
    phase) cut off at the lower of the two Nyquist frequencies: about 100 dB of stopband
    rejection and a flat passband up to ~90 % of that Nyquist frequency.
    """
    up, down = int(up), int(down)
    if up < 1 or down < 1:
        raise ValueError(f"resampling factors must be positive integers, got up={up}, down={down}")
    x = np.asarray(x, dtype=np.float64)
    g = np.gcd(up, down)
    up, down = up // g, down // g
    if up == down == 1:
        return x.copy()
    return scipy.signal.resample_poly(x, up, down, axis=axis, window=_lowpass(up, down))


def resample_to(x: np.ndarray, rate_in: float, rate_out: float, axis: int = 0) -> np.ndarray:
    """Resample from ``rate_in`` to ``rate_out`` hertz (their ratio approximated by a small fraction)."""
    r = Fraction(float(rate_out) / float(rate_in)).limit_denominator(10000)
    return resample(x, r.numerator, r.denominator, axis=axis)


def oversample(x: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
    """Raise the sample rate by the integer factor ``n`` (band-limited interpolation)."""
    return resample(x, n, 1, axis=axis)


def decimate(x: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
    """Lower the sample rate by the integer factor ``n`` (anti-aliasing filter, then keep every n-th)."""
    return resample(x, 1, n, axis=axis)
