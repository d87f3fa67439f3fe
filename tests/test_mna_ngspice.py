"""Acceptance of the foundation: MNA against ngspice on every reference netlist (48 kHz x 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuitsim.validate import validate

ROOT = Path(__file__).resolve().parents[1]
NETLISTS = sorted((ROOT / "netlists").glob("*.cir"))
LINEAR = {"fmv_tonestack", "ts808_tone"}
DURATION = 0.01  # seconds of each standard signal (3840 samples at 384 kHz)


@pytest.mark.parametrize("path", NETLISTS, ids=lambda p: p.stem)
def test_mna_matches_ngspice(path: Path):
    report = validate(path, method="mna", sample_rate=48000, oversample=8, duration=DURATION)
    limit = 1e-8 if path.stem in LINEAR else 1e-5
    print(report.table())
    assert report.signals, "no standard signals were run"
    for r in report.signals:
        assert r.esr <= limit, f"{path.stem} {r.name}: ESR {r.esr:.3e} > {limit:g}"
    assert report.dc, "no DC values were compared"
    for d in report.dc:
        assert abs(d.ours - d.ngspice) <= 1e-6 * abs(d.ngspice) + 1e-9, (
            f"{path.stem} DC {d.name}: {d.ours!r} vs ngspice {d.ngspice!r}"
        )
