"""Energy bookkeeping of the port-Hamiltonian step: stored energy, dissipated and port power per sample.

Every branch's absorbed power is its voltage times its current, both taken from the step's
node voltages and branch currents ``x̄`` (and device outputs ``f``).  Kirchhoff's laws hold for
them, so by Tellegen's theorem the absorbed powers sum to zero; grouped as Falaize & Hélie 2016,
eq. 30, that is ``ΔH/T + P_dissipated - P_ports = 0`` per sample.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuitsim.netlist.expr import TORCH_OPS, evaluate
from circuitsim.system.mna_system import DTYPE, MNATopology, _pair

CSV_COLUMNS = ("time_s", "stored_J", "dissipated_W", "ports_W", "residual_W")


def _row(n: int, row) -> torch.Tensor:
    r = torch.zeros(n, dtype=DTYPE)
    for i, c in row:
        r[i] += c
    return r


class PowerMap:
    """Dissipated and port power (watts) of a step from ``x̄`` (…, n), ``f`` (…, nf) and sources (…, nsrc)."""

    def __init__(self, topo: MNATopology, leaves) -> None:
        n = topo.size
        ev = lambda e: torch.as_tensor(evaluate(e, leaves, TORCH_OPS), dtype=DTYPE).detach()  # noqa: E731
        rows, g = [], []
        for _, ohms, pair in topo.resistors:
            rows.append(_row(n, pair))
            g.append(1.0 / ev(ohms))
        # bilinear branches: absorbed power = (a · x̄) * k * (b · x̄); ports and dissipation apart
        bil = {"dissipation": ([], [], []), "port": ([], [], [])}
        src_rows = []  # (channel, voltage row) of independent current sources
        for el in topo.circuit.elements:
            k, nd = el.kind, el.nodes
            if k == "R":
                rows.append(_row(n, _pair(nd[0], nd[1])))
                g.append(1.0 / ev(el.value))
            elif k in ("V", "E", "H") or (k == "B" and "V" in el.params):
                bil["port"][0].append(_row(n, _pair(nd[0], nd[1])))
                bil["port"][1].append(torch.tensor(1.0, dtype=DTYPE))
                bil["port"][2].append(_row(n, ((topo.branch[el.name], 1.0),)))
            elif k == "G" and "VALUE" not in el.params:
                own = set(nd[2:4]) == set(nd[0:2])
                b = bil["dissipation" if own else "port"]
                b[0].append(_row(n, _pair(nd[0], nd[1])))
                b[1].append(ev(el.value))
                b[2].append(_row(n, _pair(nd[2], nd[3])))
            elif k == "F":
                bil["port"][0].append(_row(n, _pair(nd[0], nd[1])))
                bil["port"][1].append(ev(el.value))
                bil["port"][2].append(_row(n, topo._control_branch(el)))
        for ch, el in enumerate(topo.sources):
            if el is not None and el.kind == "I":
                src_rows.append((ch, _row(n, _pair(el.nodes[0], el.nodes[1]))))
        self.r_rows = torch.stack(rows) if rows else torch.zeros(0, n, dtype=DTYPE)
        self.g = torch.stack(g) if g else torch.zeros(0, dtype=DTYPE)
        self.bil = {
            key: (torch.stack(a), torch.stack(kk), torch.stack(b)) if a else None for key, (a, kk, b) in bil.items()
        }
        self.src_ch = [ch for ch, _ in src_rows]
        self.src_rows = torch.stack([r for _, r in src_rows]) if src_rows else None
        # device and behavioural current outputs on node pairs dissipate; those in branch rows belong to ports
        cols = [o for o, (col, charge) in enumerate(topo.outputs)
                if not charge and all(i < topo.n_nodes for i, _ in col)]
        self.f_idx = torch.tensor(cols, dtype=torch.long)
        self.f_rows = torch.stack([_row(n, topo.outputs[o][0]) for o in cols]) if cols else None

    def _bilinear(self, key: str, x: torch.Tensor) -> torch.Tensor:
        b = self.bil[key]
        if b is None:
            return torch.zeros(x.shape[:-1], dtype=DTYPE)
        a, k, c = b
        return ((x @ a.T) * k * (x @ c.T)).sum(-1)

    def dissipated(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """``z(w)·w``: resistors, device junction currents, behavioural current sources, conductances."""
        p = (((x @ self.r_rows.T) ** 2) * self.g).sum(-1) + self._bilinear("dissipation", x)
        if self.f_rows is not None:
            p = p + ((x @ self.f_rows.T) * f[..., self.f_idx]).sum(-1)
        return p

    def ports(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Power delivered into the circuit by the independent and ideal controlled sources."""
        p = -self._bilinear("port", x)
        if self.src_rows is not None:
            p = p - ((x @ self.src_rows.T) * s[..., self.src_ch]).sum(-1)
        return p


def stored_energy(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``H = Σ |c| s²/2`` (joules): ``C v²/2`` per capacitor, ``L i²/2`` per inductor."""
    return 0.5 * (s * s * c.abs()).sum(-1)


def stored_energy_delta(ds: torch.Tensor, s_op: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``H(s_op + ds) - H(s_op) = Σ |c| ds (ds + 2 s_op)/2`` (joules), exact in the deviation ``ds``."""
    return 0.5 * (ds * (ds + 2.0 * s_op) * c.abs()).sum(-1)


@dataclass
class EnergyReport:
    """One row per simulated sample (batch item 0): the power balance of docs/phs.md."""

    time_s: np.ndarray
    stored_J: np.ndarray
    dissipated_W: np.ndarray
    ports_W: np.ndarray
    residual_W: np.ndarray

    @staticmethod
    def concat(parts: list[EnergyReport]) -> EnergyReport:
        return EnergyReport(*(np.concatenate([getattr(p, k) for p in parts]) for k in CSV_COLUMNS))

    def write_csv(self, path: str | Path) -> None:
        """Columns exactly ``time_s,stored_J,dissipated_W,ports_W,residual_W`` (full float64 precision)."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(CSV_COLUMNS)
            for row in zip(*(getattr(self, k) for k in CSV_COLUMNS)):
                w.writerow([repr(float(v)) for v in row])

    def plot(self, path: str | Path) -> None:
        """PNG: stored energy (top), dissipated and port power (middle), balance residual (bottom)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = self.time_s * 1e3
        fig, ax = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
        ax[0].plot(t, self.stored_J, lw=0.8)
        ax[0].set_ylabel("stored H (J)")
        ax[1].plot(t, self.dissipated_W, lw=0.8, label="dissipated")
        ax[1].plot(t, self.ports_W, lw=0.8, ls="--", label="ports")
        ax[1].set_ylabel("power (W)")
        ax[1].legend(fontsize=8)
        ax[2].plot(t, self.residual_W, lw=0.6, color="C3")
        ax[2].set_ylabel("residual (W)")
        ax[2].set_xlabel("time (ms)")
        fig.suptitle("port-Hamiltonian power balance: ΔH/T + P_diss − P_ports", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def read_csv(path: str | Path) -> EnergyReport:
    """Read a report written by :meth:`EnergyReport.write_csv`."""
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return EnergyReport(*(data[:, k] for k in range(len(CSV_COLUMNS))))


__all__ = ["CSV_COLUMNS", "EnergyReport", "PowerMap", "read_csv", "stored_energy", "stored_energy_delta"]
