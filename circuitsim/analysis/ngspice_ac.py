"""ngspice's ``.ac`` small-signal analysis as the reference for :mod:`circuitsim.analysis.smallsignal`.

The netlist is edited with the harness's helpers (:mod:`circuitsim.spice`: analyses and control
blocks stripped, ``.include`` paths made absolute, ``.param`` overrides), the input source is
rewritten as ``DC 0 AC 1`` (so the DC point is the one for a 0 V input, as ours), and
``.options`` + ``.save v(out)`` + ``.ac dec N f1 f2`` are appended.  ngspice runs in batch mode
and its binary raw file (complex data) is read back.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from circuitsim.analysis.smallsignal import F_START, F_STOP, POINTS_PER_DECADE, FrequencyResponse
from circuitsim.spice import (
    SpiceError,
    _common_edits,
    _fmt,
    _Netlist,
    _options_line,
    _run_subprocess,
    _save_vector,
)


def _read_complex_raw(path: Path) -> tuple[list[str], np.ndarray]:
    """Vector names and the (points, vars) complex array of the last plot of an ngspice raw file."""
    data = path.read_bytes()
    pos, hdr, names = 0, {}, []
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise SpiceError(f"{path}: truncated raw file header")
        key, _, val = data[pos:end].decode("latin-1").partition(":")
        pos = end + 1
        key = key.strip()
        if key == "Variables":
            for _ in range(int(hdr["No. Variables"])):
                end = data.index(b"\n", pos)
                names.append(data[pos:end].decode("latin-1").split()[1].lower())
                pos = end + 1
            continue
        if key in ("Binary", "Values"):
            break
        hdr[key] = val.strip()
    if key != "Binary" or "complex" not in hdr.get("Flags", "").lower():
        raise SpiceError(f"{path}: expected binary complex data from .ac")
    nv, npts = int(hdr["No. Variables"]), int(hdr["No. Points"])
    arr = np.frombuffer(data, dtype="<f8", count=2 * nv * npts, offset=pos).reshape(npts, nv, 2)
    return names, arr[..., 0] + 1j * arr[..., 1]


def ac_ngspice(
    netlist: str | Path,
    *,
    params: Mapping[str, float] | None = None,
    input_source: str = "VIN",
    output_node: str = "out",
    f_start: float = F_START,
    f_stop: float = F_STOP,
    points_per_decade: int = POINTS_PER_DECADE,
    reltol: float = 1e-6,
    abstol: float = 1e-15,
    vntol: float = 1e-9,
    timeout: float | None = 120.0,
) -> FrequencyResponse:
    """ngspice ``.ac dec points_per_decade f_start f_stop``: ``v(output_node)`` per volt of AC on ``input_source``."""
    nl = _Netlist.read(netlist)
    replace, extra = _common_edits(nl, params)
    src = input_source.lower()
    idx = [k for k, st in enumerate(nl.stmts) if st.depth == 0 and not st.control and st.keyword == src]
    if not idx or not src.startswith("v") or len(nl.stmts[idx[0]].tokens) < 3:
        raise SpiceError(f"{nl.path}: no top-level voltage source named '{input_source}' for the AC input")
    toks = nl.stmts[idx[0]].tokens
    replace[idx[0]] = f"{toks[0]} {toks[1]} {toks[2]} DC 0 AC 1"
    for k, st in enumerate(nl.stmts):  # no other source may carry an AC excitation
        if k != idx[0] and st.depth == 0 and st.keyword[:1] in ("v", "i") and re.search(r"\bac\b", st.text, re.I):
            raise SpiceError(f"{nl.path}:{st.lines[0] + 1}: only the input source may have an AC value")
    text = nl.render(replace, extra + [
        _options_line(reltol, abstol, vntol),
        f".save {_save_vector(output_node)}",
        f".ac dec {int(points_per_decade)} {_fmt(f_start)} {_fmt(f_stop)}",
    ])
    with tempfile.TemporaryDirectory(prefix="circuitsim_ngspice_ac_") as tmp:
        cir, raw = Path(tmp) / "circuit.cir", Path(tmp) / "out.raw"
        cir.write_text(text)
        try:
            _run_subprocess(cir, raw, timeout)
        except SpiceError as e:
            raise SpiceError(f"{nl.path}: {e}") from None
        names, arr = _read_complex_raw(raw)
    want = _save_vector(output_node)
    if "frequency" not in names or want not in names:
        raise SpiceError(f"{nl.path}: ngspice produced no '{want}' in its .ac results")
    return FrequencyResponse(arr[:, names.index("frequency")].real.copy(), arr[:, names.index(want)].copy(),
                             "ngspice .ac")


__all__ = ["ac_ngspice"]
