"""The examples run as documented (from the repository root)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def test_api_example_runs_and_prints_gradients():
    r = subprocess.run([sys.executable, "examples/api_example.py"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "d(energy)/d(D1N914.IS)" in r.stdout


def test_bundled_demo_input_is_a_mono_guitar_di():
    info = sf.info(ROOT / "examples" / "demo_input.wav")
    x, fs = sf.read(ROOT / "examples" / "demo_input.wav")
    assert info.channels == 1 and fs == 48000 and 2.0 <= len(x) / fs <= 10.0
    assert 0.1 < abs(x).max() <= 1.0
