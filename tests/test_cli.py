"""The `circuitsim` command: WAV in/out against an analytic response, and errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from circuitsim.cli import main

ROOT_NETLISTS = Path(__file__).resolve().parents[1] / "netlists"

RC = "rc low-pass\nVIN in 0 DC 0\nR1 in out {r}\nC1 out 0 {c}\n.param r=1k c=100n\n.end\n"


@pytest.fixture
def rc_netlist(tmp_path: Path) -> Path:
    p = tmp_path / "rc.cir"
    p.write_text(RC)
    return p


def write_input(path: Path, fs: int, n: int = 2000, subtype: str = "PCM_16") -> np.ndarray:
    x = 0.5 * np.random.default_rng(0).uniform(-1, 1, n)
    x[0] = 0.0
    sf.write(path, x, fs, subtype=subtype)
    return sf.read(path, dtype="float64")[0]


def test_simulate_rc_matches_bilinear_transform_with_input_volts_and_set(tmp_path, rc_netlist):
    fs = 44100
    x = write_input(tmp_path / "in.wav", fs)
    out = tmp_path / "out.wav"
    rc = main(["simulate", str(rc_netlist), str(tmp_path / "in.wav"), "-o", str(out), "--method", "mna",
               "--input-volts", "2.0", "--set", "r=2.2k", "-q"])
    assert rc == 0
    y, fs_out = sf.read(out, dtype="float64")
    assert fs_out == fs and sf.info(out).subtype in ("FLOAT", "DOUBLE")
    tau = 2.2e3 * 100e-9
    bz, az = scipy.signal.bilinear([1.0], [tau, 1.0], fs)
    ref = scipy.signal.lfilter(bz, az, 2.0 * x)
    assert np.max(np.abs(y - ref)) < 1e-6  # float32 WAV precision on volts


def test_simulate_refuses_to_overwrite(tmp_path, rc_netlist, capsys):
    write_input(tmp_path / "in.wav", 8000, 100)
    out = tmp_path / "out.wav"
    out.write_bytes(b"precious")
    rc = main(["simulate", str(rc_netlist), str(tmp_path / "in.wav"), "-o", str(out), "-q"])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"


MALFORMED = [
    ("R1 in out\n", 2),                       # missing value
    ("R1 in out 1.2.3k\n", 2),                # bad number
    ("Z1 in out 1k\n", 2),                    # unknown element letter
    ("R1 in out {1k*\n", 2),                  # unterminated brace
    (".frobnicate\n", 2),                     # unknown dot command
    (".ends\n", 2),                           # .ends without .subckt
    (".subckt foo a b\nR1 a b 1k\n", 2),      # missing .ends
    (".include nothere.inc\n", 2),            # missing include
    (".model DX FOO(IS=1n)\n", 2),            # unknown model type
    ("B1 out 0 X=V(in)\n", 2),                # B without V= or I=
    ("R1 in out 1k\nR1 out 0 1k\n", 3),       # duplicate element
    ("R1 in out {foo(2)}\n", 2),              # unknown function
    ("R1 in out {undefined_thing}\n", 2),     # undefined parameter
    ("X1 in out NOSUCH\n", 2),                # unknown subcircuit
    ("D1 out 0 DNOPE\n", 2),                  # undefined model
    ("D1 out 0 DX\n.model DX D(IS=1n mfg=OnSemi)\n", 3),  # a word as a model value (ngspice stops too)
    ("+ 1k\n", 2),                            # continuation with nothing before it
    ("T1 out 0 in 0 Z0=50 TD=1n\n", 2),       # unsupported element type
]


@pytest.mark.parametrize("body,line", MALFORMED, ids=[m[0].split("\n")[0][:20] for m in MALFORMED])
def test_malformed_netlist_gives_one_line_error(tmp_path, capsys, body, line):
    net = tmp_path / "bad.cir"
    if body.startswith("+"):
        net.write_text("title\n" + body + "VIN in 0 DC 0\nR9 in 0 1k\n.end\n")
    else:
        net.write_text("title\nVIN in 0 DC 0\n" + body + "R9 out 0 1k\n.end\n")
    write_input(tmp_path / "in.wav", 8000, 50)
    rc = main(["simulate", str(net), str(tmp_path / "in.wav"), "-o", str(tmp_path / "o.wav"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "\n" not in err and "Traceback" not in err
    expected_line = line + 1 if not body.startswith("+") else 2
    assert f"bad.cir:{expected_line}:" in err, err


def test_circuit_errors_name_the_nodes(tmp_path, capsys):
    cases = {
        "floating": ("t\nVIN in 0 DC 0\nR1 in out 1k\nC1 out x 1n\nC2 x 0 1n\n.end\n", "x"),
        "vloop": ("t\nVIN in 0 DC 0\nV2 in 0 DC 1\nR1 in out 1k\nR2 out 0 1k\n.end\n", "V2"),
        "noground": ("t\nVIN in a DC 0\nR1 in a 1k\nR2 a out 1k\n.end\n", "ground"),
    }
    write_input(tmp_path / "in.wav", 8000, 50)
    for name, (text, needle) in cases.items():
        net = tmp_path / f"{name}.cir"
        net.write_text(text)
        rc = main(["simulate", str(net), str(tmp_path / "in.wav"), "-o", str(tmp_path / "o.wav"), "-q"])
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and "Traceback" not in err, (name, err)


def test_bad_wav_and_bad_options(tmp_path, rc_netlist, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    assert main(["simulate", str(rc_netlist), str(bad), "-q"]) == 2
    assert "bad.wav" in capsys.readouterr().err
    write_input(tmp_path / "in.wav", 8000, 50)
    for extra, needle in ((["--set", "nope=1"], "nope"), (["--output-node", "zz"], "zz"),
                          (["--input-source", "V99"], "V99")):
        rc = main(["simulate", str(rc_netlist), str(tmp_path / "in.wav"), "-o", str(tmp_path / "o.wav"), "-q",
                   *extra])
        err = capsys.readouterr().err
        assert rc == 2 and needle.lower() in err.lower(), (extra, err)


def test_console_script_runs_without_traceback(tmp_path):
    net = tmp_path / "bad.cir"
    net.write_text("title\nR1 in out\n.end\n")
    r = subprocess.run([sys.executable, "-m", "circuitsim.cli", "validate", str(net)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "bad.cir:2:" in r.stderr


@pytest.mark.requires_ngspice
def test_validate_prints_esr_table_and_saves_plot(tmp_path, rc_netlist, capsys):
    png = tmp_path / "v.png"
    assert main(["validate", str(rc_netlist), "--duration", "0.002", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    esrs = [float(line.split()[1]) for line in out.splitlines() if line.startswith(("sine", "sweep", "pluck"))]
    assert len(esrs) == 5 and max(esrs) < 1e-8  # a linear RC: ngspice and the trapezoidal rule agree
    assert png.stat().st_size > 10_000


def test_internal_errors_are_not_reported_as_bad_input(tmp_path, rc_netlist, capsys, monkeypatch):
    """A bug (here a ValueError from deep inside) gets its traceback and exit status 3, not a one-line 'error'."""
    import circuitsim.api

    def broken(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(circuitsim.api, "load", broken)
    write_input(tmp_path / "in.wav", 8000, 50)
    rc = main(["simulate", str(rc_netlist), str(tmp_path / "in.wav"), "-o", str(tmp_path / "o.wav"), "-q"])
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" in err and "internal error" in err and "circuitsim: error:" not in err


def test_missing_files_are_one_line_errors(tmp_path, rc_netlist, capsys):
    rc = main(["simulate", str(rc_netlist), str(tmp_path / "nope.wav"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.wav" in err and "Traceback" not in err
    write_input(tmp_path / "in.wav", 8000, 50)
    rc = main(["simulate", str(tmp_path / "nope.cir"), str(tmp_path / "in.wav"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "nope.cir" in err and "Traceback" not in err


def test_method_choices_come_from_the_registry(monkeypatch):
    """register_method makes a formulation available to load() and to the CLI's --method."""
    import circuitsim
    from circuitsim.cli import build_parser
    from circuitsim.formulations.mna import MNAModule

    class Renamed(MNAModule):
        method = "mna-copy"

    monkeypatch.setitem(circuitsim.METHODS, "mna-copy", Renamed)  # undone after the test
    circuitsim.register_method("mna-copy", Renamed)
    model = circuitsim.load(ROOT_NETLISTS / "diode_clipper.cir", method="mna-copy", sample_rate=48000)
    assert isinstance(model, Renamed)
    args = build_parser().parse_args(["validate", str(ROOT_NETLISTS / "diode_clipper.cir"), "--method", "mna-copy"])
    assert args.method == "mna-copy"
