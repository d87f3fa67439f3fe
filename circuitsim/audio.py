"""WAV input/output and resampling (libsoxr).

Samples are float64 in full-scale units ([-1, 1] for integer PCM, as soundfile scales them);
what a sample means in volts is the caller's business (the CLI's ``--input-volts``).
Written files are IEEE float (32-bit by default), never normalised or clipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
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
#
# One resampler for every rate change of audio in numpy, one-shot and streaming alike: libsoxr
# (PyPI ``soxr``) at its "VHQ" recipe, linear phase.  Measured here (tests/test_audio.py):
# passband flat within 1e-5 dB up to 0.91 of the lower Nyquist frequency (20 kHz of 22.05 kHz),
# -3 dB near 0.955, stopband from the lower Nyquist frequency on attenuated by >= 170 dB
# (images of an oversampled signal and aliases of a decimated one); float64 throughout.  libsoxr
# removes its own group delay, so output sample k is at time k / rate_out like the input's:
# outputs stay time-aligned with the input.  A streaming resampler holds back ``latency`` output
# samples (its look-ahead: 19 ms for 44.1 kHz -> x8, 7 ms back down), released by ``flush``.
# The fit's differentiable decimation in torch is a separate job (circuitsim.fit.data.Decimator).

QUALITY = "VHQ"  # libsoxr quality recipe (28-bit precision, double-precision arithmetic)


def _out_len(n: int, rate_in: float, rate_out: float) -> int:
    """Output length for ``n`` input samples: ``ceil(n * rate_out / rate_in)`` (rounding noise ignored)."""
    return int(np.ceil(n * float(rate_out) / float(rate_in) - 1e-9))


def _pad_len(rate_in: float, rate_out: float) -> int:
    """Zeros appended at the end so that libsoxr (which rounds its length) yields ``_out_len`` samples."""
    return int(np.ceil(float(rate_in) / float(rate_out))) + 1


def _soxr(x: np.ndarray, rate_in: float, rate_out: float, axis: int) -> np.ndarray:
    import soxr

    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    n, shape = x.shape[0], x.shape[1:]
    if n == 0:
        return np.moveaxis(np.zeros((0, *shape)), 0, axis)
    flat = x.reshape(n, -1)
    flat = np.concatenate([flat, np.zeros((_pad_len(rate_in, rate_out), flat.shape[1]))])
    y = soxr.resample(np.ascontiguousarray(flat), float(rate_in), float(rate_out), quality=QUALITY)
    y = y.reshape(len(y), -1)[: _out_len(n, rate_in, rate_out)]
    return np.moveaxis(y.reshape(len(y), *shape), 0, axis)


def resample(x: np.ndarray, up: int, down: int, axis: int = 0) -> np.ndarray:
    """Change the sample rate by the integer ratio ``up/down`` (libsoxr VHQ, linear phase, no delay).

    Returns ``ceil(n * up / down)`` samples along ``axis``; output sample k lies at the input
    time ``k * down / up`` samples.  The signal is taken as zero before its start and after its
    end.  Passband and stopband: see the comment above :data:`QUALITY`.
    """
    up, down = int(up), int(down)
    if up < 1 or down < 1:
        raise UsageError(f"resampling factors must be positive integers, got up={up}, down={down}")
    x = np.asarray(x, dtype=np.float64)
    g = np.gcd(up, down)
    up, down = up // g, down // g
    if up == down == 1:
        return x.copy()
    return _soxr(x, down, up, axis)


def resample_to(x: np.ndarray, rate_in: float, rate_out: float, axis: int = 0) -> np.ndarray:
    """Resample from ``rate_in`` to ``rate_out`` hertz (any ratio; ``ceil(n * rate_out / rate_in)`` samples)."""
    rate_in, rate_out = float(rate_in), float(rate_out)
    if not (rate_in > 0 and rate_out > 0):
        raise UsageError(f"sample rates must be positive, got {rate_in:g} Hz -> {rate_out:g} Hz")
    x = np.asarray(x, dtype=np.float64)
    return x.copy() if rate_in == rate_out else _soxr(x, rate_in, rate_out, axis)


def oversample(x: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
    """Raise the sample rate by the integer factor ``n`` (band-limited interpolation)."""
    return resample(x, n, 1, axis=axis)


def decimate(x: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
    """Lower the sample rate by the integer factor ``n`` (anti-aliasing filter, then every n-th sample)."""
    return resample(x, 1, n, axis=axis)


class StreamResampler:
    """Block-by-block version of :func:`resample` for long files: the same output, bounded memory.

    Feed blocks with :meth:`process` and end with :meth:`flush`; the concatenated outputs equal
    ``resample(x, up, down)`` of the whole signal (libsoxr's streaming interface, which removes
    the filter's delay, so outputs are time-aligned with the input).  ``sample_rate`` (hertz, of
    the input; optional) only serves :attr:`latency_ms`.
    """

    def __init__(self, up: int, down: int, sample_rate: float | None = None):
        up, down = int(up), int(down)
        if up < 1 or down < 1:
            raise UsageError(f"resampling factors must be positive integers, got up={up}, down={down}")
        g = np.gcd(up, down)
        self.up, self.down = up // g, down // g
        self.sample_rate = sample_rate
        self.n_in = 0
        self.n_out = 0
        self._stream = None
        if (self.up, self.down) != (1, 1):
            import soxr

            self._stream = soxr.ResampleStream(self.down, self.up, 1, dtype="float64", quality=QUALITY)

    @property
    def latency(self) -> float:
        """Output samples (at the output rate) held back so far: input already given, output not yet released."""
        return float(self.n_in * self.up / self.down - self.n_out)

    @property
    def latency_ms(self) -> float:
        """:attr:`latency` in milliseconds (needs ``sample_rate``; NaN without it)."""
        if not self.sample_rate:
            return float("nan")
        return 1e3 * self.latency / (self.sample_rate * self.up / self.down)

    def process(self, block: np.ndarray) -> np.ndarray:
        """Resample the next block (float64); returns the output samples that are complete so far."""
        block = np.ascontiguousarray(block, dtype=np.float64).reshape(-1)
        self.n_in += len(block)
        if self._stream is None:
            out = block.copy()
        else:
            out = self._stream.resample_chunk(block)
        self.n_out += len(out)
        return out

    def flush(self) -> np.ndarray:
        """The remaining output samples once the input has ended (``ceil(n_in * up / down)`` in all)."""
        total = _out_len(self.n_in, self.down, self.up)
        if self._stream is None:
            return np.zeros(0)
        out = self._stream.resample_chunk(np.zeros(_pad_len(self.down, self.up)), last=True)
        out = out[: max(total - self.n_out, 0)]
        self.n_out += len(out)
        return out


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
