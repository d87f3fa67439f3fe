"""The Python API: load a netlist as a module, simulate audio through it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from circuitsim.circuit.build import build_circuit
from circuitsim.circuit.circuit import Circuit
from circuitsim.errors import UsageError
from circuitsim.formulations.base import AbstractCircuitModule
from circuitsim.formulations.dk import DKModule
from circuitsim.formulations.mna import MNAModule
from circuitsim.formulations.phs import PHSModule
from circuitsim.formulations.sparse import AUTO_PORTS, SparseModule, SparseNotApplicable
from circuitsim.formulations.stn import STNModule
from circuitsim.formulations.wdf import WDFModule
from circuitsim.netlist import parse_file
from circuitsim.system.checks import CompanionSingularError

METHODS: dict[str, type[AbstractCircuitModule]] = {"mna": MNAModule, "dk": DKModule, "wdf": WDFModule,
                                                 "phs": PHSModule, "stn": STNModule, "sparse": SparseModule}
# the default: DK (every circuit MNA handles, compiled), with its sparse Newton solve above AUTO_PORTS
# ports (choose_method)
DEFAULT_METHOD = "auto"


def register_method(name: str, cls: type[AbstractCircuitModule]) -> None:
    """Make a formulation available to :func:`load` and the CLI under ``name``."""
    METHODS[name] = cls


def choose_method(circuit: Circuit, input_source: str | None, output_node: str) -> tuple[str, str]:
    """The default formulation for ``circuit`` and why: ``"dk"``, or ``"sparse"`` (DK's system with the
    sparse Newton solve, formulations/sparse.py) when it has more than ``AUTO_PORTS`` nonlinear ports and
    only device blocks (no behavioural sources).  :func:`load` falls back to ``"mna"`` where DK's
    ``M = G + 2/T Cm`` is singular (a node held only by junctions, system/checks.py)."""
    from circuitsim.kernels.nonlinearity import DeviceBlock
    from circuitsim.system.mna_system import MNATopology

    nl = MNATopology(circuit, input_source, output_node).nonlinearity
    ports = f"{nl.n_ports} nonlinear port{'' if nl.n_ports == 1 else 's'}"
    if nl.n_ports > AUTO_PORTS and all(isinstance(b, DeviceBlock) for b in nl.blocks):
        return "sparse", f"sparse: {ports} > {AUTO_PORTS}"
    return "dk", f"dk: {ports}" + ("" if nl.n_ports <= AUTO_PORTS else ", behavioural sources")


def load_circuit(
    path: str | Path, params: Mapping[str, float] | None = None, dialect: str | None = None
) -> Circuit:
    """Parse and flatten a netlist file; ``params`` overrides top-level ``.param`` values.

    ``dialect`` is 'ngspice', 'ltspice' or 'pspice' (None: detected, docs/netlists.md).
    """
    return build_circuit(parse_file(path, dialect), params)


def load(
    path: str | Path,
    method: str = DEFAULT_METHOD,
    sample_rate: float = 48000.0,
    *,
    params: Mapping[str, float] | None = None,
    input_source: str = "VIN",
    output_node: str = "out",
    dialect: str | None = None,
    weights: str | Path | None = None,
    max_local_error: float | None = None,
) -> AbstractCircuitModule:
    """Load a netlist as a ``torch.nn.Module`` running at ``sample_rate`` hertz.

    ``model(x)`` maps a (batch, time) float64 tensor of input volts (driving the
    independent voltage source ``input_source``; without a VIN, the netlist's one LTspice
    ``wavefile=`` source) to the voltage at ``output_node``.  ``weights``: the ``.stn`` file of
    ``method="stn"`` (docs/stn.md).  ``method="auto"`` (the default) is :func:`choose_method`'s choice,
    kept with its reason in ``model.choice``.  ``max_local_error`` (dk, sparse): split samples whose estimated
    local truncation error, relative to the range of each charge and of the output,
    exceeds it (``DKModule.max_local_error``; None: off).
    """
    if method != "auto" and method not in METHODS:
        raise UsageError(f"unknown method '{method}' (available: auto, {', '.join(sorted(METHODS))})")
    if weights is not None and (method == "auto" or not getattr(METHODS[method], "takes_weights", False)):
        raise UsageError(f"weights (--weights) apply to method 'stn', not '{method}'")
    circuit = load_circuit(path, params, dialect)
    source = circuit.input_source_name(input_source)
    choice = None
    if method == "auto":
        method, choice = choose_method(circuit, source, output_node)
    cls = METHODS[method]
    extra = {"weights": weights} if getattr(cls, "takes_weights", False) else {}
    try:
        try:
            model = cls(circuit, sample_rate, source, output_node, **extra)
        except SparseNotApplicable as exc:
            if choice is None:
                raise
            model, choice = DKModule(circuit, sample_rate, source, output_node), f"dk: {exc}"
    except CompanionSingularError:  # nodes held only by junctions: MNA solves them with the junctions' GMIN
        if choice is None:
            raise
        model, choice = MNAModule(circuit, sample_rate, source, output_node), "mna: M = G + 2/T Cm is singular"
    if choice is not None:
        model.choice = choice
    if max_local_error is not None:
        if not isinstance(model, DKModule):
            raise UsageError(f"--max-local-error applies to methods dk and sparse, not '{model.method}'")
        if not max_local_error > 0:
            raise UsageError(f"--max-local-error must be a positive number, got {max_local_error}")
        model.max_local_error = float(max_local_error)
    return model


def process_stream(
    model: AbstractCircuitModule, blocks: Iterable[np.ndarray], oversample: int = 1, *, hold_edges: bool = False
) -> Iterator[np.ndarray]:
    """Run blocks of a long mono signal (volts) through ``model``, oversampling inside, without gradients.

    Yields output blocks (volts, at the input rate) whose concatenation is the output of the
    whole signal; memory stays bounded by the block size.  The model must run at
    ``oversample`` times the input rate.  The resamplers take the signal as 0 before its start
    and after its end; ``hold_edges=True`` takes it as its first value instead (input and output
    alike), so a biased output (a pedal at 4.5 V) does not start with the filters' step response.
    """
    from circuitsim.audio import StreamResampler

    up = StreamResampler(oversample, 1) if oversample > 1 else None
    down = StreamResampler(1, oversample) if oversample > 1 else None
    state = None
    x0 = y0 = None  # the edge values the resamplers see outside the signal (0 unless hold_edges)

    def run(xs: np.ndarray) -> np.ndarray:
        nonlocal state, y0
        if len(xs) == 0:
            return xs
        y, state = model.stream(torch.as_tensor(np.ascontiguousarray(xs, dtype=np.float64)), state)
        y = y.numpy()
        if down is None:
            return y
        if y0 is None:
            y0 = float(y[0]) if hold_edges else 0.0
        return down.process(y - y0) + y0

    def upsample(block: np.ndarray) -> np.ndarray:
        nonlocal x0
        block = np.asarray(block, dtype=np.float64)
        if up is None:
            return block
        if x0 is None and len(block):
            x0 = float(block[0]) if hold_edges else 0.0
        return up.process(block - (x0 or 0.0)) + (x0 or 0.0)

    with torch.no_grad():
        for block in blocks:
            yield run(upsample(block))
        if up is not None:
            yield run(up.flush() + (x0 or 0.0))
        finish = getattr(model, "finish_stream", None)  # a model that reads ahead (STN) owes a last sample
        if finish is not None and state is not None:
            y = finish(state).numpy()
            yield y if down is None else down.process(y - (y0 or 0.0)) + (y0 or 0.0)
        if down is not None:
            yield down.flush() + (y0 or 0.0)


def _chunks(x: np.ndarray, block: int, progress: Callable[[int], None] | None) -> Iterator[np.ndarray]:
    for start in range(0, len(x), block):
        chunk = np.asarray(x[start : start + block], dtype=np.float64)
        yield chunk
        if progress is not None:
            progress(len(chunk))


def render(
    model: AbstractCircuitModule,
    x: np.ndarray,
    *,
    block: int = 16384,
    oversample: int = 1,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Output volts of ``model`` for a mono input ``x`` (volts), block by block, without gradients."""
    return np.concatenate(list(process_stream(model, _chunks(np.asarray(x), block, progress), oversample)))


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
    model = load(path, method, sample_rate * oversample, params=params, input_source=input_source,
                 output_node=output_node)
    return render(model, x, oversample=oversample, progress=progress)
