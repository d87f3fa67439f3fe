"""The Python API: load a netlist as a module, simulate audio through it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from circuitsim.circuit.build import build_circuit
from circuitsim.circuit.circuit import Circuit
from circuitsim.formulations.base import AbstractCircuitModule
from circuitsim.formulations.dk import DKModule
from circuitsim.formulations.mna import MNAModule
from circuitsim.netlist import parse_file

METHODS: dict[str, type[AbstractCircuitModule]] = {"mna": MNAModule, "dk": DKModule}
DEFAULT_METHOD = "dk"  # DK handles every circuit MNA does (nonlinear charges included), compiled


def register_method(name: str, cls: type[AbstractCircuitModule]) -> None:
    """Make a formulation available to :func:`load` and the CLI under ``name``."""
    METHODS[name] = cls


def load_circuit(path: str | Path, params: Mapping[str, float] | None = None) -> Circuit:
    """Parse and flatten a netlist file; ``params`` overrides top-level ``.param`` values."""
    return build_circuit(parse_file(path), params)


def load(
    path: str | Path,
    method: str = DEFAULT_METHOD,
    sample_rate: float = 48000.0,
    *,
    params: Mapping[str, float] | None = None,
    input_source: str = "VIN",
    output_node: str = "out",
) -> AbstractCircuitModule:
    """Load a netlist as a ``torch.nn.Module`` running at ``sample_rate`` hertz.

    ``model(x)`` maps a (batch, time) float64 tensor of input volts (driving the
    independent voltage source ``input_source``) to the voltage at ``output_node``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}' (available: {', '.join(sorted(METHODS))})")
    return METHODS[method](load_circuit(path, params), sample_rate, input_source, output_node)


def render(
    model: AbstractCircuitModule,
    x: np.ndarray,
    *,
    block: int = 16384,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Run a long mono signal (volts) through ``model`` block by block, without gradients.

    Memory stays bounded by the block size; ``progress(n)`` is called with each block's length.
    """
    out = np.empty(len(x), dtype=np.float64)
    state = None
    with torch.no_grad():
        for start in range(0, len(x), block):
            chunk = torch.as_tensor(np.asarray(x[start : start + block], dtype=np.float64))
            y, state = model.stream(chunk, state)
            out[start : start + len(chunk)] = y.numpy()
            if progress is not None:
                progress(len(chunk))
    return out


def simulate(
    path: str | Path,
    x: np.ndarray,
    sample_rate: float,
    method: str = DEFAULT_METHOD,
    *,
    oversample: int = 1,
    params: Mapping[str, float] | None = None,
    input_source: str = "VIN",
    output_node: str = "out",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Output volts of a netlist for input volts ``x`` at ``sample_rate`` hertz, oversampling inside."""
    from circuitsim.audio import decimate
    from circuitsim.audio import oversample as upsample

    model = load(path, method, sample_rate * oversample, params=params, input_source=input_source,
                 output_node=output_node)
    xs = upsample(np.asarray(x, dtype=np.float64), oversample) if oversample > 1 else np.asarray(x, np.float64)
    y = render(model, xs, progress=progress)
    return decimate(y, oversample) if oversample > 1 else y
