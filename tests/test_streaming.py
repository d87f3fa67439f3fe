"""Long renders: block streaming with oversampling equals the one-shot path, and the CLI chain matches ngspice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from circuitsim.api import load, render
from circuitsim.audio import StreamResampler, decimate, oversample, resample
from circuitsim.cli import main
from circuitsim.signals import karplus_strong
from circuitsim.spice import simulate_ngspice
from circuitsim.validate import esr

ROOT = Path(__file__).resolve().parents[1] / "netlists"


def test_stream_resampler_equals_whole_signal_resampling():
    x = np.random.default_rng(1).standard_normal(5003)
    for up, down in ((8, 1), (1, 8), (2, 3)):
        s = StreamResampler(up, down)
        y = np.concatenate([s.process(x[i : i + 611]) for i in range(0, len(x), 611)] + [s.flush()])
        ref = resample(x, up, down)
        assert len(y) == len(ref)
        assert np.max(np.abs(y - ref)) <= 1e-12 * np.max(np.abs(ref))


def test_stream_resampler_with_tiny_blocks_equals_whole_signal_resampling():
    """Real-time block sizes (1 and 7 samples) give the one-shot output too, sample for sample."""
    x = np.random.default_rng(2).standard_normal(700)
    for up, down in ((8, 1), (1, 8)):
        ref = resample(x, up, down)
        for block in (1, 7):
            s = StreamResampler(up, down)
            y = np.concatenate([s.process(x[i : i + block]) for i in range(0, len(x), block)] + [s.flush()])
            assert len(y) == len(ref)
            assert np.max(np.abs(y - ref)) <= 1e-12 * np.max(np.abs(ref))


def test_blockwise_oversampled_render_equals_one_shot():
    fs, n = 44100, 4000
    x = 0.4 * karplus_strong(196.0, n / fs, fs, seed=2)
    model = load(ROOT / "ts808_clipping.cir", "dk", fs * 8)
    streamed = render(model, x, block=700, oversample=8)
    with torch.no_grad():
        whole = decimate(model(torch.as_tensor(oversample(x, 8))).numpy(), 8)
    assert len(streamed) == len(x)
    assert np.max(np.abs(streamed - whole)) <= 1e-9 * np.max(np.abs(whole))


def test_cli_oversampled_output_matches_ngspice(tmp_path):
    fs, up = 48000, 8
    x = 0.5 * karplus_strong(110.0, 0.01, fs, seed=4)
    sf.write(tmp_path / "in.wav", x, fs, subtype="DOUBLE")
    assert main(["simulate", str(ROOT / "diode_clipper.cir"), str(tmp_path / "in.wav"), "-o",
                 str(tmp_path / "out.wav"), "--oversample", str(up), "-q"]) == 0
    y, fs_out = sf.read(tmp_path / "out.wav", dtype="float64")
    xs = oversample(x, up)
    ref = decimate(simulate_ngspice(ROOT / "diode_clipper.cir", xs, fs * up, tmax=1 / (16 * fs * up)), up)
    assert fs_out == fs and len(y) == len(x)
    assert esr(y, ref) <= 1e-5
