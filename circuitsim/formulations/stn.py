"""STN formulation: a state-trained neural network distilled from the netlist's DK model (docs/stn.md).

``circuitsim.load(path, method="stn", sample_rate=48000, weights="MODEL.stn")`` returns an
:class:`STNModule`.  It keeps the circuit's values as parameters (knobs are read from them, e.g.
``model.set_value("drive", 0.3)``; the DC operating point comes from the white-box DC solve at
those values) and the network's weights as ``net.*`` parameters.  With autograd recording and
trainable weights the forward pass runs the recursion in torch (differentiable); otherwise it runs
the compiled loop (:mod:`circuitsim.stn.inference`).

The network reads ``lookahead`` input samples ahead (``docs/stn.md``), so :meth:`stream` returns that
many samples fewer than it was given on the first block and :meth:`finish_stream` the last ones;
:func:`circuitsim.api.process_stream` calls it, and the concatenation equals :meth:`forward`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitsim.formulations.base import AbstractCircuitModule
from circuitsim.stn.fileformat import STNFile, STNFileError
from circuitsim.stn.inference import run_compiled
from circuitsim.stn.model import LOOKAHEAD, Normalisation, STNNet
from circuitsim.stn.teacher import state_rows
from circuitsim.system.mna_system import DTYPE


@dataclass
class STNState:
    """Where a block ended: normalised state (batch, n_states) and the input samples not yet consumed.

    ``pending`` (batch, a + 1) holds normalised ``ũ[m-1] .. ũ[m+a-1]`` for the next output sample ``m``
    (``a`` the look-ahead; ``(batch, 1)`` = ``[ũ[-1] = 0]`` before the first block, fewer while it fills).
    """

    x: torch.Tensor
    pending: torch.Tensor
    samples: int = 0


class STNModule(AbstractCircuitModule):
    """The STN of a ``.stn`` file bound to its netlist (see the module doc)."""

    method = "stn"
    takes_weights = True

    def __init__(self, circuit, sample_rate: float, input_source: str | None = "VIN",  # noqa: ANN001
                 output_node: str = "out", *, weights: str | Path | STNFile | None = None):
        if weights is None:
            raise STNFileError("method 'stn' needs weights: --weights MODEL.stn (load(..., weights=...)); "
                               "make one with 'circuitsim distill NETLIST -o MODEL.stn'")
        super().__init__(circuit, sample_rate, input_source, output_node)
        f = weights if isinstance(weights, STNFile) else STNFile.load(weights)
        f.check_compatible(circuit, sample_rate, input_source or "VIN", output_node,
                           {n: float(p.detach()) for n, p in self.values()})
        meta = f.metadata
        self.stn_file = f
        self.norm = Normalisation.from_dict(meta["normalisation"])
        self.knob_names: list[str] = list(meta["knobs"])
        self.knob_ranges = {k: tuple(v) for k, v in meta["knobs"].items()}
        names, self._rows = state_rows(self)
        if names != list(meta["states"]):
            raise STNFileError(f"the STN file's states {meta['states']} are not the netlist's {names}")
        self.state_names = names
        self.activation = str(meta.get("activation", "tanh"))
        if self.activation not in ("tanh", "rational"):
            raise STNFileError(f"the STN file's activation '{self.activation}' is not known to this circuitsim")
        lookahead = int(meta.get("lookahead", LOOKAHEAD))
        if not lookahead >= 1:
            raise STNFileError(f"the STN file's lookahead {lookahead} is not a positive number of samples")
        self.net = STNNet(len(names), len(self.knob_names), int(meta["hidden"]), self.norm, dtype=DTYPE,
                          activation=self.activation, lookahead=lookahead)
        self.net.load_arrays(f.arrays)
        self._warned: set[str] = set()

    # ------------------------------------------------------------ helpers
    def knobs(self) -> torch.Tensor:
        """Normalised knob vector ``k̃`` (n_knobs,) from the current values of the knob parameters."""
        vals = []
        for name in self.knob_names:
            v = float(self.parameter(name))
            lo, hi = self.knob_ranges[name]
            if not lo - 1e-12 <= v <= hi + 1e-12 and name not in self._warned:
                self._warned.add(name)
                warnings.warn(f"{name}={v:g} is outside the STN's training range {lo:g}..{hi:g} (extrapolating)",
                              stacklevel=3)
            vals.append(v)
        k = (np.asarray(vals, dtype=np.float64) - self.norm.k_mid) / self.norm.k_half
        return torch.as_tensor(k.reshape(-1), dtype=DTYPE)

    def dc_point(self) -> tuple[torch.Tensor, float]:
        """States (volts, amperes) and output (volts) at the DC operating point for 0 V input."""

        def build() -> tuple[torch.Tensor, float]:
            with torch.no_grad():
                x, _ = self.operating_point(torch.zeros(1, dtype=DTYPE))
            m = self.matrices()
            return torch.as_tensor(self._rows, dtype=DTYPE) @ x[0].detach(), float(x[0].detach() @ m.out.detach())

        return self.cached("stn_dc", build)

    def _differentiable(self) -> bool:
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.net.parameters())

    def _run(self, seq: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Emit ``seq.shape[1] - 1 - a`` samples from normalised inputs ``seq`` (batch, P); returns (y volts, x̃)."""
        k = self.knobs()
        _, y_dc = self.dc_point()
        if seq.shape[1] < self.net.nu:
            return torch.zeros(seq.shape[0], 0, dtype=DTYPE), x0
        if self._differentiable():
            xt, yd = self.net.rollout(x0, seq, k.expand(seq.shape[0], -1))
            return yd + y_dc, xt[:, -1]
        yd, xf = run_compiled(self.net.arrays(), x0.detach().numpy(), seq.detach().numpy(), k.numpy(), self.activation)
        return torch.from_numpy(yd) + y_dc, torch.from_numpy(xf)

    def _simulate(self, u: torch.Tensor, state: STNState | None) -> tuple[torch.Tensor, STNState]:
        B = u.shape[0]
        if state is None:
            state = STNState(torch.zeros(B, len(self.state_names), dtype=DTYPE), torch.zeros(B, 1, dtype=DTYPE))
        seq = torch.cat([state.pending, u / self.norm.u_scale], dim=1)
        y, x = self._run(seq, state.x)
        return y, STNState(x, seq[:, 1 - self.net.nu :], state.samples + y.shape[1])

    def finish_stream(self, state: Any) -> torch.Tensor:
        """The output samples still owed at the end of a stream (the look-ahead past the end is 0 V)."""
        if state is None:
            return torch.zeros(0, dtype=DTYPE)
        seq = torch.cat([state.pending, torch.zeros(state.pending.shape[0], self.net.lookahead, dtype=DTYPE)], dim=1)
        y, _ = self._run(seq, state.x)
        return y[0] if y.shape[0] == 1 else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output volts (batch, time) for input volts (batch, time), from the DC operating point."""
        u, squeeze = self._as_batch(x)
        y, state = self._simulate(u, None)
        seq = torch.cat([state.pending, torch.zeros(u.shape[0], self.net.lookahead, dtype=DTYPE)], dim=1)
        tail, _ = self._run(seq, state.x)
        y = torch.cat([y, tail], dim=1)
        return y[0] if squeeze else y

    def stream(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """One block of a long signal; outputs lag the inputs by the look-ahead (see :meth:`finish_stream`)."""
        u, squeeze = self._as_batch(x)
        y, state = self._simulate(u, state)
        return (y[0] if squeeze else y), state

    def extra_repr(self) -> str:
        return (f"method=stn, sample_rate={self.sample_rate:g}, states={self.state_names}, knobs={self.knob_names}, "
                f"hidden={self.net.hidden}")
