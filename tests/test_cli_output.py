"""Listenable output of ``circuitsim simulate``: the README's main job, --ac-couple, --gain-db, --normalize,
the default oversampling, the playback note and ``--version``."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from circuitsim import __version__
from circuitsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
RC = "rc low-pass\nVIN in 0 DC 0\nVB b 0 DC 2\nR1 in m 1k\nR2 b m 1k\nC1 m out 1u\nR3 out 0 100k\n.end\n"
BIASED_RC = "biased rc\nVIN in 0 DC 0\nVB b 0 DC 3\nR1 in out 1k\nR2 b out 1k\nC1 out 0 100n\n.end\n"


def readme_main_job() -> list[str]:
    """The README's first command, without its setup step, as argv for ``main``."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)\n```", text, re.S).group(1)
    cmd = block.split("&&")[-1].strip()
    argv = shlex.split(cmd)
    assert argv[0] == "circuitsim"
    return argv[1:]


def write(path: Path, x: np.ndarray, fs: int) -> None:
    sf.write(path, x, fs, subtype="DOUBLE")


def read(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float64")[0]


def test_readme_main_job_renders_the_whole_pedal_listenably(tmp_path, capsys):
    argv = readme_main_job()
    assert "netlists/ts808.cir" in argv and "examples/demo_input.wav" in argv
    out = tmp_path / "demo_output.wav"
    argv = [str(ROOT / a) if a.startswith(("netlists/", "examples/")) else a for a in argv]
    argv[argv.index("-o") + 1] = str(out)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "oversampling 8x (nonlinear circuit" in printed  # the default, announced in one line
    assert "note:" not in printed
    y = read(out)
    x = read(ROOT / "examples/demo_input.wav")
    assert len(y) == len(x)
    assert abs(np.mean(y)) < 1e-3  # |DC| < 1 mV
    assert 0.05 < np.max(np.abs(y)) < 1.0  # audible, below full scale


def test_ac_couple_is_a_first_order_butterworth_high_pass_starting_at_zero(tmp_path, capsys):
    fs = 8000
    x = 0.3 * np.random.default_rng(3).uniform(-1, 1, 4000)
    x[0] = 0.0
    write(tmp_path / "in.wav", x, fs)
    rc = tmp_path / "biased.cir"
    rc.write_text(BIASED_RC)
    raw, ac = tmp_path / "raw.wav", tmp_path / "ac.wav"
    assert main(["simulate", str(rc), str(tmp_path / "in.wav"), "-o", str(raw), "-q"]) == 0
    assert main(["simulate", str(rc), str(tmp_path / "in.wav"), "-o", str(ac), "--ac-couple", "20", "-q"]) == 0
    y_raw, y_ac = read(raw), read(ac)
    assert y_raw[0] == pytest.approx(1.5, abs=1e-6)  # the divider's DC point
    b, a = scipy.signal.butter(1, 20.0, "highpass", fs=fs)  # prewarped bilinear, designed independently
    ref = scipy.signal.lfilter(b, a, y_raw - y_raw[0])  # at rest at the first value: no step
    assert y_ac[0] == 0.0
    assert np.max(np.abs(y_ac - ref)) < 1e-6  # float32 WAV
    assert abs(np.mean(y_ac[2000:])) < 0.02 * abs(np.mean(y_raw))


def test_gain_and_normalize(tmp_path, capsys):
    fs = 8000
    x = 0.4 * np.sin(2 * np.pi * 200 * np.arange(2000) / fs)
    write(tmp_path / "in.wav", x, fs)
    rc = tmp_path / "rc.cir"
    rc.write_text(RC)
    paths = {k: tmp_path / f"{k}.wav" for k in ("raw", "gain", "norm")}
    base = ["simulate", str(rc), str(tmp_path / "in.wav"), "-q", "-o"]
    assert main([*base, str(paths["raw"])]) == 0
    assert main([*base, str(paths["gain"]), "--gain-db", "6"]) == 0
    assert main([*base, str(paths["norm"]), "--normalize", "-3", "--gain-db", "10"]) == 0
    raw, gain, norm = (read(p) for p in paths.values())
    assert np.max(np.abs(gain - raw * 10 ** (6 / 20))) < 1e-6
    assert np.max(np.abs(norm)) == pytest.approx(10 ** (-3 / 20), rel=1e-6)
    assert np.max(np.abs(norm / np.max(np.abs(norm)) - raw / np.max(np.abs(raw)))) < 1e-6  # same waveform


def test_default_oversampling_and_the_playback_note(tmp_path, capsys):
    fs = 8000
    x = 0.02 * np.sin(2 * np.pi * 100 * np.arange(800) / fs)
    x[:400] = 0.0  # silence first: the output sits at the DC point
    write(tmp_path / "in.wav", x, fs)
    rc = tmp_path / "biased.cir"
    rc.write_text(BIASED_RC)
    assert main(["simulate", str(rc), str(tmp_path / "in.wav"), "-o", str(tmp_path / "a.wav")]) == 0
    printed = capsys.readouterr().out
    assert "oversampling 1x (linear circuit" in printed
    assert re.search(r"note: .*DC \+1\.5 V.*--ac-couple", printed)  # 1.5 V DC would clip a player
    assert main(["simulate", str(rc), str(tmp_path / "in.wav"), "-o", str(tmp_path / "b.wav"), "--ac-couple"]) == 0
    assert "note:" not in capsys.readouterr().out
    clip = ROOT / "netlists" / "ts808_clipping.cir"
    assert main(["simulate", str(clip), str(tmp_path / "in.wav"), "-o", str(tmp_path / "c.wav")]) == 0
    printed = capsys.readouterr().out
    assert "oversampling 8x (nonlinear circuit" in printed and "filter latency" in printed
    y = read(tmp_path / "c.wav")
    # the down-sampler holds the 4.5 V bias before the start: no edge transient in the raw volts
    assert np.max(np.abs(y[:300] - 4.499955)) < 1e-5


def test_help_states_latency_and_version(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert re.search(r"latency is [\d.]+ ms at 2x, [\d.]+ ms at 8x", helptext)
    assert "default 5 Hz" in helptext
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"circuitsim {__version__}"


def test_bad_listening_options_are_one_line_errors(tmp_path, capsys):
    write(tmp_path / "in.wav", np.zeros(100), 8000)
    rc = tmp_path / "rc.cir"
    rc.write_text(RC)
    for opt in (["--ac-couple", "5000"], ["--normalize", "3"], ["--ac-couple", "-1"]):
        assert main(["simulate", str(rc), str(tmp_path / "in.wav"), "-o", str(tmp_path / "x.wav"), "-q",
                     "--overwrite", *opt]) == 2
        err = capsys.readouterr().err
        assert err.startswith("circuitsim: error:") and len(err.strip().splitlines()) == 1
