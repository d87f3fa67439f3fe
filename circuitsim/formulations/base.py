"""What every formulation module shares: parameters by netlist name, sources, the operating point."""

from __future__ import annotations

import math
import sys
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from circuitsim.circuit.circuit import Circuit, ParamKind
from circuitsim.errors import UnknownNameError, UsageError
from circuitsim.solvers.dc import OperatingPointInfo, linear_point, operating_point
from circuitsim.system.mna_system import DTYPE, MNAMatrices, MNATopology

# the sizes of source arrays kept between calls (AbstractCircuitModule.source_values): smaller ones (an operating
# point's) are joined afresh and leave the kept one alone; larger ones are not worth keeping alive
SOURCE_BUFFER_MIN, SOURCE_BUFFER_BYTES = 1 << 15, 1 << 26


@dataclass
class Diagnostics:
    """What the last forward pass did: Newton work, fallbacks and the operating point."""

    samples: int = 0
    newton_iterations: int = 0
    max_iterations: int = 0
    fallbacks: list[str] = field(default_factory=list)
    operating_point: OperatingPointInfo | None = None

    @property
    def mean_iterations(self) -> float:
        return self.newton_iterations / max(self.samples, 1)


class AbstractCircuitModule(nn.Module):
    """A circuit as a ``torch.nn.Module`` mapping input volts (batch, time) to output volts.

    Every literal value of the netlist is an ``nn.Parameter`` named as in the netlist:
    ``R1``, ``D1N914.IS``, ``drive``, ``XV1.RK`` (dots are submodules).  Learnable values
    (R, L, C, controlled-source gains, model parameters) require grad by default; ``.param``
    knobs (controls) and source values do not.  Change them with :meth:`set_value` and
    :meth:`set_kind`.
    """

    method: str = "abstract"
    #: eliminates with M = G + 2/T Cm alone, which must then be invertible (system/checks.py); MNA does not
    inverts_companion: bool = True

    def __init__(
        self,
        circuit: Circuit,
        sample_rate: float,
        input_source: str | None = "VIN",
        output_node: str = "out",
    ):
        super().__init__()
        if not (sample_rate > 0 and math.isfinite(sample_rate)):
            raise UsageError(f"sample rate must be a positive number of hertz, got {sample_rate}")
        self.circuit = circuit
        self.sample_rate = float(sample_rate)
        self.topology = MNATopology(circuit, input_source, output_node)
        self.topology.inverts_companion = self.inverts_companion
        self.topology.check_waveforms()
        self._leaf_names: list[str] = []
        self._owners: list[tuple[nn.Module, str]] = []  # where each value's parameter lives (leaves())
        for name, leaf in circuit.params.items():
            *path, last = name.split(".")
            owner: nn.Module = self
            for part in path:
                child = owner._modules.get(part)
                if child is None:
                    if hasattr(owner, part):
                        raise UsageError(f"netlist name '{name}' collides with a module attribute '{part}'")
                    child = nn.Module()
                    owner.add_module(part, child)
                owner = child
            if hasattr(owner, last) and last not in owner._parameters:
                raise UsageError(f"netlist name '{name}' collides with an attribute of the module; rename it")
            req = leaf.kind == ParamKind.LEARNABLE
            owner.register_parameter(last, nn.Parameter(torch.tensor(leaf.value, dtype=DTYPE), requires_grad=req))
            self._leaf_names.append(name)
            self._owners.append((owner, last))
        self.diagnostics = Diagnostics()
        self._cache: dict[str, tuple[Any, Any]] = {}
        self._source_buffer: tuple[tuple[float, ...], np.ndarray] | None = None  # (constants, array): source_values

    # ------------------------------------------------------------ parameters
    def parameter(self, name: str) -> nn.Parameter:
        """The parameter of a netlist value by name (``R1``, ``D1N914.IS``, ``drive``)."""
        for n in self._leaf_names:
            if n.lower() == name.lower():
                return self.get_parameter(n)
        raise UnknownNameError(f"no value named '{name}' (values: {', '.join(self._leaf_names)})")

    def values(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(netlist name, parameter) for every value of the circuit."""
        for n in self._leaf_names:
            yield n, self.get_parameter(n)

    def set_value(self, name: str, value: float) -> None:
        """Set a value (SI units) in place, e.g. a knob: ``model.set_value("drive", 0.8)``."""
        with torch.no_grad():
            self.parameter(name).fill_(float(value))

    def set_kind(self, name: str, kind: ParamKind | str) -> None:
        """Make a value learnable (requires grad) or fixed/control (no grad)."""
        kind = ParamKind(kind)
        self.parameter(name).requires_grad_(kind == ParamKind.LEARNABLE)

    def _params(self) -> list[nn.Parameter]:
        """The parameters of :attr:`_leaf_names`, in order (a parameter replaced by assignment included)."""
        return [owner._parameters[name] for owner, name in self._owners]

    def leaves(self) -> dict[str, torch.Tensor]:
        return dict(zip(self._leaf_names, self._params()))

    def cached(self, what: str, build: Callable[[], Any], detached: bool = False) -> Any:
        """``build()``, reused while no value has changed and no gradient is being recorded.

        Inference calls (streaming blocks, repeated renders) then skip re-deriving the matrices;
        any in-place change of a value (``set_value``, an optimiser step) bumps its version and
        invalidates the cache.  With autograd recording, results are always rebuilt: keeping the graph
        and replaying it through one node per call (retain_graph) was measured on the FMV stack at
        0.03 of 1.41 ms per forward + backward at 64 samples and 0.12 of 7.1 ms at 192,000 (CPU time),
        its backward costing about what the rebuild saves.  ``detached``: what ``build`` returns (and what
        the caller keeps in it) carries no graph, so it is reused while gradients are recorded too.
        """
        leaves = self._params()
        if not detached and self._recording(leaves):
            return build()
        key = (what, self.sample_rate, tuple(p._version for p in leaves), tuple(id(p) for p in leaves))
        hit = self._cache.get(what)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = (key, build())
            self._cache[what] = hit
        return hit[1]

    @staticmethod
    def _recording(leaves: list[nn.Parameter]) -> bool:
        """Whether autograd records a graph through the values now."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in leaves)

    def matrices(self) -> MNAMatrices:
        """The MNA matrices at the current parameter values (differentiable)."""
        return self.cached("mna", lambda: self.topology.assemble(self.leaves()))

    # ------------------------------------------------------------ signals
    def source_values(self, m: MNAMatrices, u: torch.Tensor) -> torch.Tensor:
        """Independent source values per sample (batch, time, n_sources): channel 0 is ``u`` (volts).

        With constant sources besides the input (supplies, bias), and neither ``u`` nor the values recording a
        gradient, the array is a buffer kept between calls (``SOURCE_BUFFER_MIN`` to ``SOURCE_BUFFER_BYTES``
        bytes): where no tensor or array of a previous call still refers to it and the constants are the same,
        only channel 0 is written (a third of a fresh ``(batch, time, 3)`` join on the TS808 tone stage).
        Not for two threads running one module at once (neither are the module's other caches).
        """
        if m.sources.numel() == 1:  # only the input: a view, no copy
            return u.unsqueeze(-1)
        rest = m.sources[1:].to(u.dtype)
        shape = (*u.shape, m.sources.numel())
        if (u.dtype != DTYPE or (torch.is_grad_enabled() and (u.requires_grad or rest.requires_grad))
                or not SOURCE_BUFFER_MIN <= 8 * math.prod(shape) <= SOURCE_BUFFER_BYTES):
            return torch.cat([u.unsqueeze(-1), rest.expand(*u.shape, -1)], dim=-1)
        key = tuple(rest.tolist())
        held = self._source_buffer
        # free: referred to by this attribute and getrefcount's argument only (a tensor from torch.from_numpy
        # holds the array, so does every view of it)
        if held is not None and held[0] == key and held[1].shape == shape and sys.getrefcount(held[1]) == 2:
            buf = torch.from_numpy(held[1])
            buf[..., 0] = u
            return buf
        arr = np.empty(shape)
        buf = torch.from_numpy(arr)
        torch.cat([u.unsqueeze(-1), rest.expand(*u.shape, -1)], dim=-1, out=buf)
        self._source_buffer = (key, arr)
        return buf

    def operating_point(self, u0: torch.Tensor | None = None) -> tuple[torch.Tensor, OperatingPointInfo]:
        """DC operating point for input value(s) ``u0`` (volts, shape (batch,)): unknowns (batch, n)."""
        m = self.matrices()
        u0 = torch.zeros(1, dtype=DTYPE) if u0 is None else torch.as_tensor(u0, dtype=DTYPE).reshape(-1)
        s = self.source_values(m, u0)
        return operating_point(self.topology, m, s)

    def start_point(self, m: MNAMatrices, s0: torch.Tensor) -> tuple[torch.Tensor, OperatingPointInfo]:
        """The DC operating point (batch, n) at sources ``s0`` (batch, n_sources), carrying its gradient.

        A circuit without device outputs: one differentiable solve of ``G x = Bu s``
        (:func:`~circuitsim.solvers.dc.linear_point`).  Otherwise Newton without autograd, then one
        implicit-function step (:meth:`MNATopology.implicit_step`) for the gradient.
        """
        def linear() -> tuple[torch.Tensor | None, OperatingPointInfo]:
            info = OperatingPointInfo()
            return linear_point(self.topology, m, s0, info), info

        # both answers are functions of the values and s0 alone: kept (:meth:`cached`) while no value changes,
        # per source vector.  The linear one only where no gradient is recorded (its solve carries the gradient;
        # a repeated render skips a solve and the residual test, ~0.3 ms); Newton's, found without autograd,
        # also where one is (a repeated forward + backward at the same values skips its ~14 iterations, 3-5 ms
        # on the DS-1 booster; a training step, whose values changed, finds it again)
        linear_ok = not self.topology.nonlinearity.n_outputs
        x, info = self._memo_point("linear point", s0, linear, detached=False) if linear_ok else (None, None)
        if x is not None:
            return x, info

        def newton() -> tuple[torch.Tensor, OperatingPointInfo]:
            with torch.no_grad():
                return operating_point(self.topology, m, s0)

        x, info = self._memo_point("operating point", s0, newton, detached=True)
        return self.topology.implicit_step(m, x, m.G, m.Wi, s0 @ m.Bu.T), info

    def _memo_point(self, what: str, s0: torch.Tensor, solve: Callable[[], tuple[Any, OperatingPointInfo]],
                    detached: bool) -> tuple[Any, OperatingPointInfo]:
        """``solve()``, kept per source vector ``s0`` in :meth:`cached` ``what`` (``detached``: as there)."""
        memo = self.cached(what, dict, detached)
        hit = memo.get("op")
        if hit is not None and hit[0].shape == s0.shape and torch.equal(hit[0], s0):
            return hit[1], replace(hit[2])
        x, info = solve()
        memo["op"] = (s0.detach().clone(), x, replace(info))
        return x, info

    def dc_voltages(self, u0: float = 0.0) -> dict[str, float]:
        """Node voltages (volts) and source currents (amperes) at the DC operating point, by name."""
        x, _ = self.operating_point(torch.tensor([u0], dtype=DTYPE))
        return {name: float(v) for name, v in zip(self.topology.names, x[0])}

    @staticmethod
    def _as_batch(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        x = torch.as_tensor(x, dtype=DTYPE)
        if x.ndim == 1:
            return x.unsqueeze(0), True
        if x.ndim != 2:
            raise UsageError(f"input must be (batch, time) volts, got shape {tuple(x.shape)}")
        return x, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output volts (batch, time) for input volts (batch, time); a 1-D input gives a 1-D output.

        The simulation starts from the DC operating point with the input at its first sample.
        """
        u, squeeze = self._as_batch(x)
        y = self._output(u)
        return y[0] if squeeze else y

    def _output(self, u: torch.Tensor) -> torch.Tensor:
        """Output volts (batch, time) of a run from the DC operating point whose end state is not kept
        (:meth:`forward`); a formulation that spends work on the end state overrides this to skip it."""
        return self._simulate(u, None)[0]

    def stream(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """Process one block of a long signal: returns (output, state to pass with the next block).

        ``state=None`` starts from the DC operating point; consecutive blocks give exactly
        the output of one long call.
        """
        u, squeeze = self._as_batch(x)
        y, state = self._simulate(u, state)
        return (y[0] if squeeze else y), state

    @abstractmethod
    def _simulate(self, u: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, sample_rate={self.sample_rate:g}, nodes={len(self.circuit.nodes)}, "
            f"unknowns={self.topology.size}, ports={len(self.topology.ports)}"
        )

