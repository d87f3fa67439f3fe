"""The white-box teacher: the DK model at ``oversample`` x the STN rate, its states recorded.

The STN's state is physical: the voltage across every capacitor and the current through every
inductor of the netlist (volts, amperes), not DK's trapezoidal history ``q = Qᵀ h``.  Those are
linear functions of the MNA unknowns at sample ``n``, and from the DK elimination
(``docs/architecture.md``; Holters & Zölzer, DAFx-11, §3)

    x_n = M⁻¹ Q q_{n-1} + M⁻¹ Bu s_n − M⁻¹ W f(v_n),

so a state row ``r`` (``r · x`` = that capacitor's voltage) is one more output of the compiled
kernel with rows ``(r M⁻¹ Q, r M⁻¹ Bu, −r M⁻¹ W)`` appended to ``(D, E, F)``: the kernel is not
touched.  States and the output are recorded at the teacher rate and then band-limited and
decimated to the STN rate by the same filter (:func:`circuitsim.audio.decimate`), applied to
their deviations from the DC operating point so the segment edges do not ring.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuitsim.audio import decimate, oversample
from circuitsim.circuit.circuit import GROUND
from circuitsim.errors import UsageError
from circuitsim.formulations.dk import DKModule
from circuitsim.kernels.autograd import run_state_space
from circuitsim.solvers.dc import operating_point
from circuitsim.system.mna_system import DTYPE


@dataclass
class Recording:
    """Teacher trajectories at the STN rate: input ``u`` (volts), states ``x``, output ``y`` (volts).

    ``u`` (batch, T); ``x`` (batch, T, n_states); ``y`` (batch, T); ``x_dc`` (n_states,) and
    ``y_dc`` the DC operating point for 0 V at the input, at these knob settings.
    """

    u: np.ndarray
    x: np.ndarray
    y: np.ndarray
    x_dc: np.ndarray
    y_dc: float


def state_rows(module: DKModule) -> tuple[list[str], np.ndarray]:
    """Names (``v(C1)``, ``i(L1)``) and rows (n_states, n) over the MNA unknowns of the STN states."""
    topo = module.topology
    names, rows = [], []
    for el in module.circuit.elements:
        r = np.zeros(topo.size)
        if el.kind == "C":
            a, b = el.nodes[0], el.nodes[1]
            if a != GROUND:
                r[a] += 1.0
            if b != GROUND:
                r[b] -= 1.0
            names.append(f"v({el.name})")
        elif el.kind == "L":
            r[topo.branch[el.name]] = 1.0
            names.append(f"i({el.name})")
        else:
            continue
        rows.append(r)
    if not rows:
        raise UsageError("the circuit has no capacitor or inductor: it is memoryless, there is no state to distil")
    m = module.matrices()
    if float(m.Wq.abs().max()) > 0 if m.Wq.numel() else False:
        warnings.warn("device charges (junction capacitances) are not STN states; only C voltages and L currents "
                      "are", stacklevel=2)
    return names, np.array(rows)


class Teacher:
    """DK at ``oversample * sample_rate`` hertz with its states recorded (see the module doc)."""

    def __init__(self, netlist: str | Path, sample_rate: float, oversample_factor: int = 8, *,
                 params: Mapping[str, float] | None = None, input_source: str = "VIN", output_node: str = "out"):
        from circuitsim.api import load

        self.sample_rate = float(sample_rate)
        self.factor = int(oversample_factor)
        self.module: DKModule = load(netlist, "dk", self.sample_rate * self.factor, params=params,
                                     input_source=input_source, output_node=output_node)
        self.state_names, self._rows = state_rows(self.module)

    def set_knobs(self, knobs: Mapping[str, float]) -> None:
        """Set knob values (``.param`` names) of the teacher; the matrices are re-derived on the next run."""
        for k, v in knobs.items():
            self.module.set_value(k, v)

    def dc_point(self) -> tuple[np.ndarray, float]:
        """States and output at the DC operating point for 0 V at the input (current knob settings)."""
        with torch.no_grad():
            m = self.module.matrices()
            s = self.module.source_values(m, torch.zeros(1, 1, dtype=DTYPE))[:, 0]
            x_op, _ = operating_point(self.module.topology, m, s)
        x = x_op[0].numpy()
        return self._rows @ x, float(x @ m.out.numpy())

    def record(self, u: np.ndarray) -> Recording:
        """Run the teacher on input volts ``u`` (batch, T) at the STN rate, starting from the DC point.

        ``u`` is interpolated to the teacher rate (:func:`circuitsim.audio.oversample`), simulated,
        and states and output are decimated back with the same band-limiting filter.
        """
        u = np.atleast_2d(np.asarray(u, dtype=np.float64))
        mod = self.module
        with torch.no_grad():
            m, d = mod.dk()
            k2 = 2.0 * mod.sample_rate
            sol = torch.linalg.solve(m.G + k2 * m.Cm, torch.cat([d.Q, m.Bu, m.Wi + k2 * m.Wq], dim=1))
            ns, nu = d.Q.shape[1], m.Bu.shape[1]
            rows = torch.as_tensor(self._rows, dtype=DTYPE)
            D = torch.cat([d.D, rows @ sol[:, :ns]])  # x_n = M⁻¹(Q q + Bu s − W f): the state rows
            E = torch.cat([d.E, rows @ sol[:, ns : ns + nu]])
            F = torch.cat([d.F, -(rows @ sol[:, ns + nu :])])
            mats = (d.A, d.B, d.C, D, E, F, d.G, d.H, d.K)
            uo = torch.as_tensor(oversample(u, self.factor, axis=1))
            s = mod.source_values(m, uo)
            x_op, _ = operating_point(mod.topology, m, s[:, 0])
            f_op = mod.topology.nonlinearity.torch_eval(x_op @ m.Nv.T, m.theta)
            q0 = (k2 * (x_op @ m.Cm.T + f_op @ m.Wq.T)) @ d.Q  # trapezoidal history at the DC point
            out, _, _ = run_state_space(mats, m.theta, s[:, 1:], q0, mod.topology.nonlinearity,
                                        sample_rate=mod.sample_rate, v_init=x_op @ m.Nv.T, sample_offset=1)
            first = torch.cat([(x_op @ m.out).unsqueeze(1), x_op @ rows.T], dim=1).unsqueeze(1)
            out = torch.cat([first, out], dim=1).numpy()  # (batch, T*factor, 1 + n_states)
        x_dc, y_dc = self.dc_point()
        dc = np.concatenate([[y_dc], x_dc])
        low = decimate(out - dc, self.factor, axis=1)[:, : u.shape[1]] + dc
        return Recording(u=u, x=low[..., 1:], y=low[..., 0], x_dc=x_dc, y_dc=y_dc)


def knob_grid(ranges: Mapping[str, tuple[float, float]], count: int, seed: int = 0) -> list[dict[str, float]]:
    """``count`` knob settings across their ranges: an even grid for one knob, corners plus random for more."""
    names = list(ranges)
    if not names:
        return [{}]
    if len(names) == 1:
        lo, hi = ranges[names[0]]
        return [{names[0]: float(v)} for v in np.linspace(lo, hi, max(count, 2))]
    rng = np.random.default_rng(seed)
    mesh = np.array(np.meshgrid(*[ranges[k] for k in names])).reshape(len(names), -1).T
    corners = [dict(zip(names, c)) for c in mesh]
    extra = [{k: float(rng.uniform(*ranges[k])) for k in names} for _ in range(max(count - len(corners), 0))]
    return [{k: float(v) for k, v in c.items()} for c in corners] + extra


def concat_recordings(recs: Sequence[Recording]) -> Recording:
    """Stack recordings of equal length along the batch axis (DC points must agree; used for one knob setting)."""
    return Recording(u=np.concatenate([r.u for r in recs]), x=np.concatenate([r.x for r in recs]),
                     y=np.concatenate([r.y for r in recs]), x_dc=recs[0].x_dc, y_dc=recs[0].y_dc)
