"""The state-trained network (Parker, Esqueda & Bergner, DAFx-19; docs/stn.md (S2)): x[n] = x[n-1] + f_θ(.).

Coordinates (all normalised, see ``docs/stn.md``)::

    x̃ = (x − x_dc(k)) / s_x      states: deviation from the DC operating point, per-state scale
    ũ = u / u_scale               input volts over the largest training level (--input-volts)
    k̃ = (k − k_mid) / k_half      knobs mapped to [-1, 1] over their training range
    z = [x̃[n-1], ũ[n-1], ũ[n], ..., ũ[n+a], k̃]  input window with ``a`` samples of look-ahead (see below)

    g(z) = W3 φ(W2 φ(W1 z + b1) + b2) + L z    small MLP (φ = tanh or its Padé approximant) plus a linear skip
    x̃[n] = x̃[n-1] + σ ⊙ (g(z) − g([0, ..., 0, k̃]))      σ = s_Δ / s_x (per-state step scale)
    y[n] = y_dc(k) + [x̃[n], ũ[n]] · (a + B k̃)               learned linear readout

The input window ``ũ[n-1..n+1]`` is there because the teacher's input between samples ``n-1`` and
``n`` is the band-limited (sinc, non-causal) interpolation of the samples around them, and the
recorded states are band-limited by a linear-phase filter: with ``u[n]`` alone the teacher-forcing
residual of the diode clipper stayed at 3.6 % of the step variance, with ``u[n-1..n+1]`` it fell
to about 0.2 % (``docs/stn.md``).  On the TS-808 clipping stage a second sample of look-ahead
(``a = 2``, the default) lowers the held-out ESR by about a third (``docs/stn.md``); each costs one
sample of latency.

Outside the training range the network extrapolates; ``x̃`` is limited to 1.5 times the largest
``|x̃|`` seen in training (per state), so the output stays bounded for any input level.

Subtracting ``g`` at the DC point makes the DC operating point an exact fixed point for every
knob setting; ``x_dc(k)``, ``y_dc(k)`` come from the white-box DC solve of the netlist.  The
readout is learned (least squares, then trained with the rest), not DK's output equation,
which would need DK's Newton solve: for the circuits here the output is exactly a linear
combination of capacitor voltages and the input, which the readout represents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

LOOKAHEAD = 1  # input samples read ahead when a file does not say (format version 1 files before `lookahead`)
ACTIVATIONS = ("tanh", "rational")
PADE_CLIP = 4.97  # where the [7/6] Padé approximant of tanh reaches 1


def rational_tanh(a: torch.Tensor) -> torch.Tensor:
    """The [7/6] Padé approximant of tanh, clipped at ±4.97 (within 1e-4 of tanh; no exp, so it vectorises)."""
    x = torch.clamp(a, -PADE_CLIP, PADE_CLIP)
    x2 = x * x
    return x * (135135.0 + x2 * (17325.0 + x2 * (378.0 + x2))) / (135135.0 + x2 * (62370.0 + x2 * (3150.0 + 28.0 * x2)))


@dataclass
class Normalisation:
    """Scales of the normalised coordinates (SI units: volts, amperes, knob units)."""

    s_x: np.ndarray  # (n_states,) state scale
    s_dx: np.ndarray  # (n_states,) scale of one step's state change
    s_y: float  # output scale (volts), for the loss
    u_scale: float  # volts
    k_mid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    k_half: np.ndarray = field(default_factory=lambda: np.ones(0))
    x_lim: np.ndarray | None = None  # (n_states,) safety limit of |x̃|: 1.5 x the largest in training

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v if v is None else float(v))
                for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Normalisation:
        return cls(**{k: (np.asarray(v, dtype=np.float64) if isinstance(v, list) else v if v is None else float(v))
                      for k, v in d.items()})


class STNNet(nn.Module):
    """The network of the module docstring, in torch (training and the differentiable forward)."""

    WEIGHTS = ("W1", "b1", "W2", "b2", "W3", "L", "ra", "rB")

    def __init__(self, n_states: int, n_knobs: int, hidden: int, norm: Normalisation, dtype=torch.float32,
                 activation: str = "tanh", lookahead: int = LOOKAHEAD):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}' (known: {', '.join(ACTIVATIONS)})")
        self.activation = activation
        self._act = torch.tanh if activation == "tanh" else rational_tanh
        if lookahead < 1:
            raise ValueError(f"lookahead must be at least 1 sample, not {lookahead}")
        self.lookahead = int(lookahead)
        self.nu = self.lookahead + 2  # input window ũ[n-1] .. ũ[n+lookahead]
        nz = n_states + self.nu + n_knobs
        self.n_states, self.n_knobs, self.hidden = n_states, n_knobs, hidden
        self.norm = norm
        g = torch.Generator().manual_seed(0)

        def init(*shape: int, scale: float) -> nn.Parameter:
            return nn.Parameter((torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype))

        self.W1 = init(hidden, nz, scale=1.0 / np.sqrt(nz))
        self.b1 = init(hidden, scale=0.1)
        self.W2 = init(hidden, hidden, scale=1.0 / np.sqrt(hidden))
        self.b2 = init(hidden, scale=0.1)
        self.W3 = init(n_states, hidden, scale=1e-3)
        self.L = init(n_states, nz, scale=0.0)
        self.ra = init(n_states + 1, scale=0.0)  # readout: y - y_dc = [x̃, ũ]·(ra + rB k̃)
        self.rB = init(n_states + 1, n_knobs, scale=0.0)
        self.register_buffer("sigma", torch.as_tensor(norm.s_dx / norm.s_x, dtype=dtype))
        lim = np.full(n_states, np.inf) if norm.x_lim is None else np.asarray(norm.x_lim, dtype=np.float64)
        self.register_buffer("x_lim", torch.as_tensor(lim, dtype=dtype))

    def g(self, z: torch.Tensor) -> torch.Tensor:
        h = self._act(z @ self.W1.T + self.b1)
        h = self._act(h @ self.W2.T + self.b2)
        return h @ self.W3.T + z @ self.L.T

    def g0(self, k: torch.Tensor) -> torch.Tensor:
        """``g`` at the DC point [0, ..., 0, k̃] for knob vector(s) ``k`` (..., n_knobs)."""
        zeros = torch.zeros(*k.shape[:-1], self.n_states + self.nu, dtype=k.dtype, device=k.device)
        return self.g(torch.cat([zeros, k], dim=-1))

    def increment(self, x: torch.Tensor, u: torch.Tensor, k: torch.Tensor,
                  g0: torch.Tensor | None = None) -> torch.Tensor:
        """``g(z) − g(z_dc)`` in units of ``s_Δ``: ``x`` (..., n_states), ``u`` (..., nu) = ũ[n-1..n+a], ``k``."""
        z = torch.cat([x, u, k], dim=-1)
        return self.g(z) - (self.g0(k) if g0 is None else g0)

    def readout(self, x: torch.Tensor, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Output deviation from ``y_dc`` (volts): ``[x̃, ũ] · (a + B k̃)``."""
        w = self.ra + k @ self.rB.T if self.n_knobs else self.ra
        return (torch.cat([x, u.unsqueeze(-1)], dim=-1) * w).sum(-1)

    def rollout(self, x0: torch.Tensor, u: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the recursion (differentiable): ``x0`` (B, n_states), ``u`` (B, T+1+a), ``k`` (B, n_knobs).

        ``u[:, j]`` is ``ũ[j-1]``: one sample before the first (0 from the DC point) and ``a`` (the
        look-ahead) after the last (0 at the end of a signal).  Returns
        states (B, T, n_states), normalised, and output deviations ``y − y_dc`` (B, T) in volts.
        """
        ns, nu = self.n_states, self.nu
        T = u.shape[1] - nu + 1
        win = torch.stack([u[:, j : j + T] for j in range(nu)], dim=-1)  # (B, T, nu): ũ[n-1..n+a]
        # the input and knob parts of the first layer and of the skip, for all n at once (same g as below)
        pre = win @ self.W1[:, ns : ns + nu].T + (k @ self.W1[:, ns + nu :].T + self.b1).unsqueeze(1)
        lin = win @ self.L[:, ns : ns + nu].T - (self.g0(k) - k @ self.L[:, ns + nu :].T).unsqueeze(1)
        H = self.hidden
        # one product of x̃[n-1] with the first layer and the (σ-scaled) skip; σ folded into W3 and lin (S2)
        Wx = torch.cat([self.W1[:, :ns].T, self.L[:, :ns].T * self.sigma], dim=1)
        W2t, W3s, lin = self.W2.T, self.W3.T * self.sigma, lin * self.sigma
        x = x0
        xs = []
        for n in range(T):
            a = x @ Wx
            h = self._act(torch.addmm(self.b2, self._act(a[:, :H] + pre[:, n]), W2t))
            x = torch.clamp(x + a[:, H:] + h @ W3s + lin[:, n], -self.x_lim, self.x_lim)  # (S2), safety limit
            xs.append(x)
        xt = torch.stack(xs, dim=1)
        kk = k.unsqueeze(1).expand(-1, T, -1)
        return xt, self.readout(xt, u[:, 1 : T + 1], kk)

    def arrays(self) -> dict[str, np.ndarray]:
        """The weights as float64 arrays (for the file and the compiled loop)."""
        out = {n: getattr(self, n).detach().cpu().double().numpy().copy() for n in self.WEIGHTS}
        out["sigma"] = self.sigma.detach().cpu().double().numpy().copy()
        out["x_lim"] = self.x_lim.detach().cpu().double().numpy().copy()
        return out

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for n in self.WEIGHTS:
                p = getattr(self, n)
                a = torch.as_tensor(np.asarray(arrays[n]), dtype=p.dtype)
                if a.shape != p.shape:
                    raise ValueError(f"weight {n} has shape {tuple(a.shape)}, expected {tuple(p.shape)}")
                p.copy_(a)
