"""Small-signal frequency response at the DC operating point, as ngspice's ``.ac`` computes it.

The circuit's equations (docs/architecture.md, "One set of equations")

    G x + Wi f_i(Nv x) + d/dt (Cm x + Wq f_q(Nv x)) = Bu s(t)

linearised at the DC operating point ``x_op`` (``J_f = df/dv`` at ``v_op = Nv x_op``) and
driven by a phasor ``e^{j w t}`` on the input source (column 0 of ``Bu``) give, per frequency,

    (G + Wi J_f Nv + j w (Cm + Wq J_f Nv)) X(w) = Bu[:, 0],      H(w) = X_out(w),

the output node's complex voltage per volt of input: exactly the linear system ngspice's
``.ac`` solves with the source's ``AC 1`` (ngspice ``src/spicelib/analysis/acan.c``: the devices'
small-signal stamps at the operating point, one complex solve per frequency).
``Wi`` and ``Wq`` select the current and charge columns of ``J_f``.  No time discretisation is
involved, so the comparison with ngspice tests the stamps and the device derivatives alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuitsim.errors import UsageError

F_START, F_STOP = 20.0, 20000.0
POINTS_PER_DECADE = 70  # 211 points over 20 Hz..20 kHz, the same grid as ngspice's ``.ac dec 70 20 20k``


def log_frequencies(f_start: float = F_START, f_stop: float = F_STOP, per_decade: int = POINTS_PER_DECADE
                    ) -> np.ndarray:
    """``f_start * 10**(k / per_decade)`` up to ``f_stop`` (hertz): ngspice's ``dec`` sweep points."""
    if not (0 < f_start < f_stop):
        raise UsageError(f"need 0 < f_start < f_stop, got {f_start:g}, {f_stop:g}")
    n = int(np.floor(per_decade * np.log10(f_stop / f_start) + 1e-9))
    return f_start * 10.0 ** (np.arange(n + 1) / per_decade)


@dataclass
class FrequencyResponse:
    """A complex response ``H`` (volts out per volt in) at ``frequency_hz``."""

    frequency_hz: np.ndarray
    response: np.ndarray
    label: str = ""

    @property
    def magnitude_db(self) -> np.ndarray:
        """``20 log10 |H|`` (dB)."""
        return 20.0 * np.log10(np.maximum(np.abs(self.response), 1e-300))

    @property
    def phase_deg(self) -> np.ndarray:
        """``arg H`` in degrees, in (-180, 180] as ngspice prints ``vp()``."""
        return np.degrees(np.angle(self.response))

    def write_csv(self, path: str | Path) -> None:
        """Columns ``frequency_hz,magnitude_db,phase_deg``, one row per frequency."""
        rows = np.column_stack([self.frequency_hz, self.magnitude_db, self.phase_deg])
        np.savetxt(path, rows, delimiter=",", header="frequency_hz,magnitude_db,phase_deg", comments="",
                   fmt="%.10g")

    def difference(self, ref: FrequencyResponse) -> tuple[float, float]:
        """Largest |magnitude difference| (dB) and |phase difference| (degrees, wrapped) against ``ref``."""
        if len(ref.frequency_hz) != len(self.frequency_hz) or not np.allclose(
            ref.frequency_hz, self.frequency_hz, rtol=1e-9
        ):
            raise UsageError("responses on different frequency grids cannot be compared")
        ratio = self.response / ref.response
        return float(np.max(np.abs(20 * np.log10(np.abs(ratio))))), float(np.max(np.abs(np.degrees(np.angle(ratio)))))


def linearise(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """``(Gs, Cs, b, out, x_op)``: the small-signal conductance and capacitance matrices at the DC point.

    ``Gs = G + Wi J_f Nv``, ``Cs = Cm + Wq J_f Nv`` with ``J_f`` the device Jacobian at ``x_op``
    (the operating point for input 0 V); ``b = Bu[:, 0]`` the input's column; ``out`` the
    output selector.
    """
    with torch.no_grad():
        m = model.matrices()
        x_op, _ = model.operating_point()
        x_op = x_op[0]
        nl = model.topology.nonlinearity
        if m.Nv.shape[0] and nl.n_outputs:
            _, jf = nl.torch_eval((m.Nv @ x_op).unsqueeze(0), m.theta, jacobian=True)
            jf = jf[0]
            gs = m.G + m.Wi @ jf @ m.Nv
            cs = m.Cm + m.Wq @ jf @ m.Nv
        else:
            gs, cs = m.G.clone(), m.Cm.clone()
    return gs, cs, m.Bu[:, 0], m.out, x_op


def ac_response(
    netlist: str | Path,
    frequencies: np.ndarray | None = None,
    *,
    params: Mapping[str, float] | None = None,
    input_source: str = "VIN",
    output_node: str = "out",
    model=None,  # noqa: ANN001 - an already loaded AbstractCircuitModule (any method) to reuse
) -> FrequencyResponse:
    """Small-signal response of ``output_node`` per volt on ``input_source`` at the DC point (hertz -> complex)."""
    from circuitsim.api import load

    f = log_frequencies() if frequencies is None else np.asarray(frequencies, dtype=np.float64)
    if model is None:
        model = load(netlist, "mna", 48000.0, params=params, input_source=input_source, output_node=output_node)
    gs, cs, b, out, _ = linearise(model)
    w = torch.as_tensor(2 * np.pi * f, dtype=torch.float64)
    a = gs.to(torch.complex128).unsqueeze(0) + 1j * w[:, None, None] * cs.to(torch.complex128).unsqueeze(0)
    rhs = b.to(torch.complex128).expand(len(f), -1).unsqueeze(-1)
    x = torch.linalg.solve(a, rhs).squeeze(-1)
    h = (x @ out.to(torch.complex128)).numpy()
    return FrequencyResponse(f, h, "circuitsim")


__all__ = ["FrequencyResponse", "ac_response", "linearise", "log_frequencies"]
