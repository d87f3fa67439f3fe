"""WAV I/O (formats, scaling, error messages) and polyphase resampling against analytic sines."""

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


@pytest.mark.parametrize("factor", [2, 8])
def test_oversample_matches_analytic_sine(factor):
    fs, f0, n = 48000.0, 1234.5, 4800
    x = np.sin(2 * np.pi * f0 * np.arange(n) / fs + 0.3)
    y = oversample(x, factor)
    assert len(y) == n * factor
    t_hi = np.arange(n * factor) / (fs * factor)
    ref = np.sin(2 * np.pi * f0 * t_hi + 0.3)
    core = _interior(len(y), 64 * factor)  # away from the zero-padded ends (filter half length 32 in)
    assert np.max(np.abs(y[core] - ref[core])) < 2e-5


def test_oversample_then_decimate_returns_the_signal():
    fs, n = 48000.0, 9600
    t = np.arange(n) / fs
    x = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.3 * np.sin(2 * np.pi * 15000.0 * t + 1.0)
    y = decimate(oversample(x, 8), 8)
    assert len(y) == n
    core = _interior(n, 64)
    assert np.max(np.abs(y[core] - x[core])) < 2e-5
    # a component above the lower Nyquist frequency is removed on the way down
    hi = 0.5 * np.sin(2 * np.pi * 100000.0 * np.arange(8 * n) / (8 * fs))
    assert np.max(np.abs(decimate(hi, 8)[core])) < 2e-5


def test_resample_rational_rate_change():
    x = np.sin(2 * np.pi * 1000.0 * np.arange(4410) / 44100.0)
    y = resample_to(x, 44100.0, 48000.0)
    assert len(y) == 4800
    ref = np.sin(2 * np.pi * 1000.0 * np.arange(4800) / 48000.0)
    core = _interior(4800, 200)
    assert np.max(np.abs(y[core] - ref[core])) < 2e-5
    assert np.array_equal(resample(x, 3, 3), x)
    with pytest.raises(ValueError):
        resample(x, 0, 1)


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
