"""STN (issue 10, docs/stn.md): distil -> save -> load -> simulate, the file's refusals, accuracy and stability.

Every accuracy figure is against the white-box DK model at 8x the STN rate, decimated (the teacher),
on guitar-like phrases (:func:`circuitsim.stn.excitation.guitar_phrase`) that are not in the training
excitation.  Both acceptance circuits are distilled once per module with the default configuration
and a fixed step budget (reproducible; the wall-clock budget of ``circuitsim distill`` is an upper
bound): the diode clipper in about a minute, the TS-808 clipping stage with its drive knob in
about 4-5 minutes on a loaded 2-core machine.  ``benchmarks/bench_stn.py`` runs the 5-minute
wall-clock distillations and the speed comparison.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import circuitsim
from circuitsim.api import load, process_stream, render
from circuitsim.audio import read_wav, write_wav
from circuitsim.cli import main
from circuitsim.errors import UsageError
from circuitsim.stn import STNFile, STNFileError, distill
from circuitsim.stn.excitation import guitar_phrase
from circuitsim.validate import esr

CLIPPER = Path(__file__).parent.parent / "netlists" / "diode_clipper.cir"
TS808 = Path(__file__).parent.parent / "netlists" / "ts808_clipping.cir"
FS = 48000
TS808_STEPS = (25000, 340)  # teacher-forcing and recursive steps (docs/stn.md "Training")
UNSEEN_DRIVE = 0.5  # the knob grid trained on is 0, 0.2, ..., 1


@pytest.fixture(scope="module")
def clipper_stn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("stn") / "clipper.stn"
    distill(CLIPPER, path, minutes=4.0, max_steps=(3000, 150), progress=False)
    return path


@pytest.fixture(scope="module")
def ts808_stn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("stn") / "ts808_drive.stn"
    distill(TS808, path, knobs="drive", minutes=10.0, max_steps=TS808_STEPS, progress=False)
    return path


@pytest.fixture(scope="module")
def ts808_knob_stn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stn") / "ts808.stn"
    distill(TS808, path, knobs="drive", settings=2, seconds=1.0, minutes=2.0, max_steps=(300, 4), progress=False)
    return path


def _dk_reference(netlist: Path, x: np.ndarray, **values: float) -> np.ndarray:
    dk = load(netlist, "dk", 8 * FS)
    for k, v in values.items():
        dk.set_value(k, v)
    return np.concatenate(list(process_stream(dk, [x], 8, hold_edges=True)))  # resamplers hold the 4.5 V bias


def _stn(netlist: Path, weights: Path, **values: float):  # noqa: ANN202 - an STNModule
    model = circuitsim.load(netlist, method="stn", sample_rate=FS, weights=weights)
    for k, v in values.items():
        model.set_value(k, v)
    return model


@pytest.mark.parametrize("level_db", [0.0, -12.0])
def test_clipper_held_out_esr(clipper_stn: Path, level_db: float) -> None:
    # measured 8.9e-5 (0 dB) and 8.3e-5 (-12 dB) with this step budget; acceptance is 1e-3
    x = guitar_phrase(1.5, FS, 1.0 * 10 ** (level_db / 20), seed=2024)
    assert esr(render(_stn(CLIPPER, clipper_stn), x), _dk_reference(CLIPPER, x)) < 2e-4


@pytest.mark.parametrize("level_db", [0.0, -12.0])
@pytest.mark.parametrize("drive", [UNSEEN_DRIVE, 0.2, 1.0])
def test_ts808_held_out_esr(ts808_stn: Path, drive: float, level_db: float) -> None:
    # issue 10 acceptance: held-out ESR <= 1e-3, also at a drive never trained on (UNSEEN_DRIVE)
    assert UNSEEN_DRIVE not in [s["drive"] for s in STNFile.load(ts808_stn).metadata["knob_settings"]]
    x = guitar_phrase(1.5, FS, 1.0 * 10 ** (level_db / 20), seed=2024)
    assert esr(render(_stn(TS808, ts808_stn, drive=drive), x), _dk_reference(TS808, x, drive=drive)) <= 1e-3


def test_round_trip_stream_and_paths(clipper_stn: Path) -> None:
    f = STNFile.load(clipper_stn)
    meta = f.metadata
    assert meta["format"] == "circuitsim-stn" and meta["version"] == 1
    assert meta["sample_rate"] == FS and meta["states"] == ["v(C1)"] and meta["knobs"] == {}
    assert meta["training_levels_db"] == [-40.0, 0.0] and meta["input_volts"] == 1.0
    model = circuitsim.load(CLIPPER, method="stn", sample_rate=FS, weights=clipper_stn)
    x = guitar_phrase(0.3, FS, 0.7, seed=77)
    with torch.no_grad():
        whole = model(torch.as_tensor(x)).numpy()
    assert whole.shape == x.shape and np.isfinite(whole).all()
    np.testing.assert_array_equal(render(model, x, block=1001), whole)  # blocks == one call (look-ahead held)
    y = model(torch.as_tensor(x[:600]))  # autograd recording: the torch recursion, differentiable
    assert y.requires_grad
    a = model.net.lookahead  # the last a samples saw 0 V ahead (the end of x[:600])
    assert a == meta["lookahead"] == 2
    np.testing.assert_allclose(y.detach().numpy()[:-a], whole[: 600 - a], rtol=0, atol=1e-12)
    y.square().sum().backward()
    assert model.net.W1.grad is not None and torch.isfinite(model.net.W1.grad).all()


@pytest.mark.parametrize("circuit", ["clipper", "ts808"])
def test_stability_60s_plus_12db(circuit: str, request: pytest.FixtureRequest) -> None:
    netlist, weights, values = ((CLIPPER, request.getfixturevalue("clipper_stn"), {}) if circuit == "clipper" else
                                (TS808, request.getfixturevalue("ts808_stn"), {"drive": UNSEEN_DRIVE}))
    model = _stn(netlist, weights, **values)
    loud = guitar_phrase(60.0, FS, 4.0, seed=99)  # +12 dB above the largest training level (1 V)
    x = np.concatenate([loud, np.zeros(FS)])
    y = render(model, x)
    _, y_dc = model.dc_point()
    peak = int(np.argmax(np.abs(loud)))  # the white-box output around the loudest input sample
    ref = _dk_reference(netlist, loud[max(peak - FS // 4, 0) : peak + FS // 4], **values)
    assert np.isfinite(y).all()
    assert np.max(np.abs(y - y_dc)) < 1.5 * np.max(np.abs(ref - y_dc))  # bounded near the diodes' clamp (state limit)
    assert np.max(np.abs(y[-FS // 10 :] - y_dc)) < 1e-6  # settled to the white-box DC operating point


def test_refusals(clipper_stn: Path, tmp_path: Path) -> None:
    with pytest.raises(STNFileError, match="runs at 48000 Hz, not 44100 Hz"):
        circuitsim.load(CLIPPER, method="stn", sample_rate=44100, weights=clipper_stn)
    with pytest.raises(STNFileError, match="another netlist"):
        circuitsim.load(TS808, method="stn", sample_rate=FS, weights=clipper_stn)
    edited = tmp_path / "clipper_edited.cir"
    edited.write_text(CLIPPER.read_text().replace("2.2k", "2.3k"))
    with pytest.raises(STNFileError, match="another netlist"):
        circuitsim.load(edited, method="stn", sample_rate=FS, weights=clipper_stn)
    with pytest.raises(STNFileError, match="needs weights"):
        circuitsim.load(CLIPPER, method="stn", sample_rate=FS)
    with pytest.raises(UsageError, match="apply to method 'stn'"):
        circuitsim.load(CLIPPER, method="dk", sample_rate=FS, weights=clipper_stn)
    garbage = tmp_path / "garbage.stn"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(STNFileError, match="not a circuitsim STN file"):
        STNFile.load(garbage)
    with pytest.raises(STNFileError, match="no such STN file"):
        STNFile.load(tmp_path / "missing.stn")
    # a newer format version, and a file without its weights
    f = STNFile.load(clipper_stn)
    future = tmp_path / "future.stn"
    with zipfile.ZipFile(clipper_stn) as zin, zipfile.ZipFile(future, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            if item == "metadata.npy":
                meta = dict(f.metadata, version=2)
                buf = io.BytesIO()
                np.save(buf, np.array(json.dumps(meta)))
                data = buf.getvalue()
            zout.writestr(item, data)
    with pytest.raises(STNFileError, match="version 2 is not supported"):
        STNFile.load(future)
    partial = STNFile({k: v for k, v in f.arrays.items() if k != "W2"}, dict(f.metadata))
    partial.save(tmp_path / "partial.stn")
    with pytest.raises(STNFileError, match="lacks W2"):
        STNFile.load(tmp_path / "partial.stn")
    with pytest.raises(STNFileError, match="exists"):
        f.save(clipper_stn)


def test_fixed_value_refusal_and_knobs(ts808_knob_stn: Path, tmp_path: Path) -> None:
    fixed = tmp_path / "fixed.stn"
    distill(TS808, fixed, params={"drive": 0.3}, seconds=1.0, minutes=2.0, max_steps=(50, 2), progress=False)
    with pytest.raises(STNFileError, match="drive=0.3 held fixed, not 0.5"):
        circuitsim.load(TS808, method="stn", sample_rate=FS, weights=fixed)
    circuitsim.load(TS808, method="stn", sample_rate=FS, weights=fixed, params={"drive": 0.3})
    model = circuitsim.load(TS808, method="stn", sample_rate=FS, weights=ts808_knob_stn)
    assert model.stn_file.metadata["knobs"] == {"drive": [0.0, 1.0]}
    x = guitar_phrase(0.1, FS, 0.5, seed=5)
    a = render(model, x)
    y = model(torch.as_tensor(x[:400]))  # three states: the torch recursion (S2) against the compiled loop
    assert y.requires_grad
    ahead = model.net.lookahead
    np.testing.assert_allclose(y.detach().numpy()[:-ahead], a[: 400 - ahead], rtol=0, atol=1e-12)
    model.set_value("drive", 0.9)
    b = render(model, x)
    assert np.isfinite(a).all() and np.isfinite(b).all() and np.max(np.abs(a - b)) > 1e-3
    model.set_value("drive", 1.5)
    with pytest.warns(UserWarning, match="outside the STN's training range"):
        render(model, x)
    with pytest.raises(UsageError, match="not a .param"):
        distill(TS808, None, knobs="R5", minutes=1.0, progress=False)


def test_cli_distill_and_simulate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.stn"
    rc = main(["distill", str(CLIPPER), "-o", str(out), "--minutes", "0.5", "--seconds", "4", "-q"])
    assert rc == 0 and out.is_file()
    assert main(["distill", str(CLIPPER), "-o", str(out), "--minutes", "0.5", "-q"]) == 2  # no overwrite
    assert "exists" in capsys.readouterr().err
    x = guitar_phrase(0.2, FS, 0.5, seed=3)
    write_wav(tmp_path / "in.wav", x, FS)
    rc = main(["simulate", str(CLIPPER), str(tmp_path / "in.wav"), "--method", "stn", "--weights", str(out),
               "-o", str(tmp_path / "o.wav"), "-q"])
    assert rc == 0
    y, fs = read_wav(tmp_path / "o.wav")
    assert fs == FS and len(y) == len(x) and np.isfinite(y).all()
    write_wav(tmp_path / "in44.wav", x, 44100)
    rc = main(["simulate", str(CLIPPER), str(tmp_path / "in44.wav"), "--method", "stn", "--weights", str(out),
               "-o", str(tmp_path / "o44.wav"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "runs at 48000 Hz, not 44100 Hz" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(("activation", "lookahead"), [("tanh", 1), ("rational", 1), ("rational", 2)])
def test_compiled_loop_matches_torch_recursion(activation: str, lookahead: int) -> None:
    from circuitsim.stn.inference import run_compiled
    from circuitsim.stn.model import Normalisation, STNNet, rational_tanh

    a = torch.linspace(-8, 8, 2001, dtype=torch.float64)
    assert float((rational_tanh(a) - torch.tanh(a)).abs().max()) < 1e-4  # the Padé approximant is close to tanh
    norm = Normalisation(s_x=np.ones(3), s_dx=np.full(3, 0.1), s_y=1.0, u_scale=1.0, k_mid=np.zeros(1),
                         k_half=np.ones(1), x_lim=np.full(3, 5.0))
    net = STNNet(3, 1, 8, norm, dtype=torch.float64, activation=activation, lookahead=lookahead)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    u = torch.randn(2, 202, generator=g, dtype=torch.float64)
    x0 = 0.1 * torch.randn(2, 3, generator=g, dtype=torch.float64)
    xt, y = net.rollout(x0, u, torch.full((2, 1), 0.3, dtype=torch.float64))
    yc, xc = run_compiled(net.arrays(), x0.numpy(), u.numpy(), np.array([0.3]), activation)
    np.testing.assert_allclose(yc, y.detach().numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(xc, xt[:, -1].detach().numpy(), rtol=0, atol=1e-12)
