"""WAV I/O (formats, scaling, error messages) and resampling (libsoxr) against analytic sines."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from circuitsim.audio import (
    AudioError,
    AudioExistsError,
    decimate,
    oversample,
    read_wav,
    read_wav_channels,
    resample,
    resample_to,
    write_wav,
)


def test_float_wav_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-3.0, 3.0, 1000)  # float WAVs hold values beyond full scale: never clipped
    p = tmp_path / "f32.wav"
    write_wav(p, x, 48000)
    y, fs = read_wav(p)
    assert fs == 48000 and y.dtype == np.float64
    assert np.array_equal(y, x.astype(np.float32).astype(np.float64))
    assert sf.info(str(p)).subtype == "FLOAT"
    p64 = tmp_path / "f64.wav"
    write_wav(p64, x, 44100, subtype="DOUBLE")
    y64, fs64 = read_wav(p64)
    assert fs64 == 44100 and np.array_equal(y64, x)


@pytest.mark.parametrize(("subtype", "bits"), [("PCM_16", 16), ("PCM_24", 24)])
def test_integer_wav_is_scaled_to_full_scale(tmp_path, subtype, bits):
    full = 2 ** (bits - 1)
    codes = np.array([0, 1, -1, full // 2, -full, full - 1, 12345], dtype=np.int64)
    p = tmp_path / f"{subtype}.wav"
    sf.write(str(p), (codes / full).astype(np.float64), 96000, subtype=subtype)
    y, fs = read_wav(p)
    assert fs == 96000
    assert np.array_equal(y, codes / full)


def test_multichannel(tmp_path):
    p = tmp_path / "st.wav"
    data = np.stack([np.linspace(-0.5, 0.5, 64), np.linspace(0.25, -0.25, 64)], axis=1)
    sf.write(str(p), data, 48000, subtype="DOUBLE")
    with pytest.raises(AudioError, match="has 2 channels") as info:
        read_wav(p)
    assert str(p) in str(info.value) and "\n" not in str(info.value)
    y1, _ = read_wav(p, channel=1)
    assert np.array_equal(y1, data[:, 1])
    both, fs = read_wav_channels(p)
    assert both.shape == (64, 2) and fs == 48000 and np.array_equal(both, data)
    with pytest.raises(AudioError, match="channel 2 does not exist"):
        read_wav(p, channel=2)


def test_error_messages_name_file_and_problem(tmp_path):
    txt = tmp_path / "notes.wav"
    txt.write_text("this is not audio\n")
    flac = tmp_path / "x.flac"
    sf.write(str(flac), np.zeros(100), 48000, format="FLAC")
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0), 48000, subtype="FLOAT")
    cases = [
        (tmp_path / "missing.wav", "file not found"),
        (txt, "not a readable WAV file"),
        (flac, "not a WAV file"),
        (empty, "zero length"),
        (tmp_path, "is a directory"),
    ]
    for path, problem in cases:
        with pytest.raises(AudioError) as info:
            read_wav(path)
        msg = str(info.value)
        assert msg.startswith(str(path)) and problem in msg and "\n" not in msg
    nan = tmp_path / "nan.wav"
    sf.write(str(nan), np.array([0.0, np.nan, 0.0]), 48000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        read_wav(nan)


def test_write_refuses_to_overwrite(tmp_path):
    p = tmp_path / "o.wav"
    write_wav(p, np.zeros(10), 48000)
    with pytest.raises(AudioExistsError, match="already exists"):
        write_wav(p, np.ones(10), 48000)
    assert np.array_equal(read_wav(p)[0], np.zeros(10))
    with pytest.raises(FileExistsError):  # AudioExistsError is also a FileExistsError
        write_wav(p, np.ones(10), 48000)
    write_wav(p, np.ones(10), 48000, overwrite=True)
    assert np.array_equal(read_wav(p)[0], np.ones(10))
    with pytest.raises(AudioError, match="NaN"):
        write_wav(tmp_path / "n.wav", np.array([np.nan]), 48000)
    with pytest.raises(AudioError, match="sample rate"):
        write_wav(tmp_path / "r.wav", np.zeros(4), 44100.5)
    assert not (tmp_path / "n.wav").exists() and not (tmp_path / "r.wav").exists()


def _interior(n: int, margin: int) -> slice:
    return slice(margin, n - margin)


# Input samples at each end where the zero-padded signal's abrupt start and end still ring through the
# resampler's filters (libsoxr VHQ: measured error 5e-10 at this margin, 8e-5 at 64 samples).
MARGIN = 256


@pytest.mark.parametrize("factor", [2, 8])
def test_oversample_matches_analytic_sine(factor):
    fs, f0, n = 48000.0, 1234.5, 4800
    x = np.sin(2 * np.pi * f0 * np.arange(n) / fs + 0.3)
    y = oversample(x, factor)
    assert len(y) == n * factor
    t_hi = np.arange(n * factor) / (fs * factor)
    ref = np.sin(2 * np.pi * f0 * t_hi + 0.3)
    core = _interior(len(y), MARGIN * factor)
    assert np.max(np.abs(y[core] - ref[core])) < 1e-8


def test_oversample_then_decimate_returns_the_signal():
    fs, n = 48000.0, 9600
    t = np.arange(n) / fs
    x = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.3 * np.sin(2 * np.pi * 15000.0 * t + 1.0)
    y = decimate(oversample(x, 8), 8)
    assert len(y) == n
    core = _interior(n, MARGIN)
    assert np.max(np.abs(y[core] - x[core])) < 1e-8
    # a component above the lower Nyquist frequency is removed on the way down
    hi = 0.5 * np.sin(2 * np.pi * 100000.0 * np.arange(8 * n) / (8 * fs))
    assert np.max(np.abs(decimate(hi, 8)[core])) < 1e-8


def test_resample_rational_rate_change():
    x = np.sin(2 * np.pi * 1000.0 * np.arange(4410) / 44100.0)
    y = resample_to(x, 44100.0, 48000.0)
    assert len(y) == 4800
    ref = np.sin(2 * np.pi * 1000.0 * np.arange(4800) / 48000.0)
    core = _interior(4800, MARGIN)
    assert np.max(np.abs(y[core] - ref[core])) < 1e-8
    assert np.array_equal(resample(x, 3, 3), x)
    assert len(resample(x[:5003 % 4410], 2, 3)) == -(-(5003 % 4410) * 2 // 3)  # ceil(n up / down) samples
    assert [len(decimate(np.ones(n), 8)) for n in (1, 7, 8, 9, 5003)] == [1, 1, 1, 2, 626]
    with pytest.raises(ValueError):
        resample(x, 0, 1)


def _tone_fit(y: np.ndarray, f: float, fs: float) -> tuple[float, float]:
    """Amplitude of the f-hertz component of ``y`` (least squares) and the RMS of what is left."""
    t = np.arange(len(y)) / fs
    basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], axis=1)
    coef = np.linalg.lstsq(basis, y, rcond=None)[0]
    return float(np.hypot(*coef)), float(np.sqrt(np.mean((y - basis @ coef) ** 2)))


@pytest.mark.parametrize("fs", [44100.0, 48000.0])
def test_resampler_passband_ripple_and_stopband_attenuation(fs):
    """The documented response (circuitsim/audio.py): flat to 0.91 of Nyquist, >= 170 dB stopband, both ways x8."""
    n, up = int(0.1 * fs), 8
    mid = slice(n // 4, 3 * n // 4)  # steady state, far from the ends
    for f in (100.0, 1000.0, 10000.0, 0.91 * fs / 2):
        x = np.sin(2 * np.pi * f * np.arange(n) / fs)
        hi = oversample(x, up)
        amp, rest = _tone_fit(hi[up * n // 4: up * 3 * n // 4], f, up * fs)
        assert abs(20 * np.log10(amp)) < 1e-5, f  # passband ripple (dB), on the way up ...
        assert 20 * np.log10(rest * np.sqrt(2)) < -170, f  # ... and no image of the tone above fs/2
        xs = np.sin(2 * np.pi * f * np.arange(up * n) / (up * fs))
        amp_d, _ = _tone_fit(decimate(xs, up)[mid], f, fs)
        assert abs(20 * np.log10(amp_d)) < 1e-5, f  # ... and on the way down
    for f in (fs / 2 * 1.005, 0.6 * fs, 1.5 * fs, 3.3 * fs):  # stopband: from the lower Nyquist frequency on
        xs = np.sin(2 * np.pi * f * np.arange(up * n) / (up * fs))
        alias = decimate(xs, up)[mid]
        assert 20 * np.log10(np.sqrt(2 * np.mean(alias**2))) < -170, f


def test_stream_resampler_reports_its_latency_and_stays_time_aligned():
    """An impulse comes out where it went in (delay compensated); the look-ahead held back is reported."""
    from circuitsim.audio import StreamResampler

    fs, n, k = 44100.0, 20000, 7001
    x = np.zeros(n)
    x[k] = 1.0
    up = StreamResampler(8, 1, sample_rate=fs)
    first = up.process(x)
    assert up.latency == 8 * n - len(first) > 0  # output samples at 352.8 kHz not released yet
    assert up.latency_ms == pytest.approx(1e3 * up.latency / (8 * fs))
    assert 1.0 < up.latency_ms < 50.0
    y = np.concatenate([first, up.flush()])
    assert len(y) == 8 * n and up.latency == 0
    assert int(np.argmax(y)) == 8 * k  # the peak of the band-limited impulse sits at the input's instant
    down = StreamResampler(1, 8, sample_rate=8 * fs)
    z = np.concatenate([down.process(y[i:i + 4096]) for i in range(0, len(y), 4096)] + [down.flush()])
    assert len(z) == n and int(np.argmax(z)) == k
    assert np.isnan(StreamResampler(2, 1).latency_ms)  # no rate given: no milliseconds


# ---------------------------------------------------------------- standard signals (circuitsim.signals)


def test_standard_signals_start_at_zero_and_have_their_levels():
    from circuitsim.signals import standard_signals

    fs = 384000.0
    sigs = standard_signals(fs, 0.02)
    assert set(sigs) == {"sine", "sweep", "pluck_50mV", "pluck_300mV", "pluck_1V"}
    peaks = {"sine": 0.5, "sweep": 0.5, "pluck_50mV": 0.05, "pluck_300mV": 0.3, "pluck_1V": 1.0}
    for name, x in sigs.items():
        assert x.shape == (int(0.02 * fs),) and x.dtype == np.float64
        assert x[0] == 0.0 and abs(x[1]) < 1e-6 * peaks[name]  # fade-in from the DC operating point
        assert np.max(np.abs(x)) == pytest.approx(peaks[name], rel=1e-3)
        # band-limited: nothing left above 24 kHz (the plucks are made at 48 kHz and resampled)
        spec = np.abs(np.fft.rfft(x))
        f = np.fft.rfftfreq(len(x), 1 / fs)
        if name != "sweep":
            assert np.max(spec[f > 24000]) < 1e-2 * np.max(spec)
    again = standard_signals(fs, 0.02)
    assert all(np.array_equal(sigs[k], again[k]) for k in sigs)  # deterministic


def test_karplus_strong_pitch_and_sweep_frequency():
    from circuitsim.signals import karplus_strong, log_sweep

    fs = 48000.0
    y = karplus_strong(110.0, 0.5, fs, seed=0)
    r = np.correlate(y[:12000], y[:12000], "full")[11999:]
    lag = np.argmax(r[200:]) + 200  # first strong repetition: one period
    assert fs / lag == pytest.approx(110.0, rel=0.01)
    # the sweep's instantaneous frequency (zero crossings) follows f0*(f1/f0)^(t/T)
    x = log_sweep(100.0, 10000.0, 1.0, fs)
    zc = np.nonzero(np.diff(np.signbit(x)))[0]
    mid = zc[(zc > 0.45 * fs) & (zc < 0.55 * fs)]
    f_est = fs / (2 * np.mean(np.diff(mid)))
    assert f_est == pytest.approx(100.0 * 100.0**0.5, rel=0.02)
