"""WAV input/output and polyphase resampling.

Samples are float64 in full-scale units ([-1, 1] for integer PCM, as soundfile scales them);
what a sample means in volts is the caller's business (the CLI's ``--input-volts``).
Written files are IEEE float (32-bit by default), never normalised or clipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf

from circuitsim.errors import CircuitsimError, UsageError

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


class AudioError(CircuitsimError, ValueError):
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
        raise UsageError(f"resampling factors must be positive integers, got up={up}, down={down}")
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


class StreamResampler:
    """Block-by-block version of :func:`resample` for long files: same filter, same output, bounded memory.

    Feed blocks with :meth:`process` and end with :meth:`flush`; the concatenated outputs equal
    ``resample(x, up, down)`` of the whole signal.  Output sample ``n`` is the filter output at
    zero-stuffed position ``n*down + D`` with ``D = (len(h)-1)/2`` (linear phase, no delay).
    """

    def __init__(self, up: int, down: int):
        g = np.gcd(int(up), int(down))
        self.up, self.down = int(up) // g, int(down) // g
        self.h = _lowpass(self.up, self.down) * self.up
        self.delay = (len(self.h) - 1) // 2
        self.keep = -(-len(self.h) // self.up) + 1  # input samples of history the filter reaches back
        self.buf = np.zeros(0)
        self.b0 = 0  # absolute index of buf[0]
        self.n_in = 0
        self.n_out = 0

    def _emit(self, final: bool) -> np.ndarray:
        L, M = self.up, self.down
        total = -(-self.n_in * L // M) if final else None
        if self.up == self.down == 1:
            out, self.buf = self.buf, np.zeros(0)
            self.b0 = self.n_in
            self.n_out += len(out)
            return out
        conv = scipy.signal.upfirdn(self.h, self.buf, up=L, down=1)  # positions b0*L + k
        last_known = (self.b0 + len(self.buf)) * L - 1  # last zero-stuffed position of real input
        outs = []
        n = self.n_out
        while True:
            p = n * M + self.delay
            if total is not None and n >= total:
                break
            if total is None and p > last_known:
                break
            k = p - self.b0 * L
            outs.append(conv[k] if 0 <= k < len(conv) else 0.0)
            n += 1
        self.n_out = n
        drop = max(0, len(self.buf) - self.keep)
        self.buf = self.buf[drop:]
        self.b0 += drop
        return np.asarray(outs, dtype=np.float64)

    def process(self, block: np.ndarray) -> np.ndarray:
        """Resample the next block; returns the output samples that are complete so far."""
        block = np.asarray(block, dtype=np.float64)
        self.buf = np.concatenate([self.buf, block])
        self.n_in += len(block)
        return self._emit(final=False)

    def flush(self) -> np.ndarray:
        """The remaining output samples once the input has ended."""
        return self._emit(final=True)


def wav_blocks(path: str | os.PathLike[str], block: int = 65536) -> tuple[int, int, Iterator[np.ndarray]]:
    """Open a mono WAV for streaming: ``(frames, sample_rate, iterator of float64 blocks)``.

    The same checks as :func:`read_wav`, but the samples are read ``block`` frames at a time.
    """
    p = Path(path)
    info = _open_info(p)
    if info.channels != 1:
        raise AudioError(f"{p}: has {info.channels} channels but a mono signal is needed")

    def gen() -> Iterator[np.ndarray]:
        for b in sf.blocks(str(p), blocksize=block, dtype="float64", always_2d=True):
            if not np.all(np.isfinite(b)):
                raise AudioError(f"{p}: contains NaN or infinite samples")
            yield np.ascontiguousarray(b[:, 0])

    return int(info.frames), int(info.samplerate), gen()


class WavWriter:
    """Write a float WAV block by block (``with WavWriter(path, fs) as w: w.write(block)``); refuses to overwrite."""

    def __init__(self, path: str | os.PathLike[str], sample_rate: int, *, overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise AudioExistsError(f"{self.path}: already exists (use --overwrite to replace it)")
        self.sample_rate = int(sample_rate)
        self._file: sf.SoundFile | None = None

    def __enter__(self) -> WavWriter:
        try:
            self._file = sf.SoundFile(str(self.path), "w", self.sample_rate, 1, subtype="FLOAT", format="WAV")
        except Exception as e:  # noqa: BLE001
            raise AudioError(f"{self.path}: cannot write WAV ({str(e).strip()})") from None
        return self

    def write(self, block: np.ndarray) -> None:
        if len(block):
            if not np.all(np.isfinite(block)):
                raise AudioError(f"{self.path}: output contains NaN or infinite values")
            self._file.write(np.asarray(block, dtype=np.float64))

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            if exc_type is not None:  # never leave a truncated output behind
                self.path.unlink(missing_ok=True)
