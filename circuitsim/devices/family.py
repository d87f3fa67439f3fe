"""What a device family declares, so that the system layer and the kernels need no per-family code.

A family (the diode, the Gummel-Poon BJT, ...) is one module under ``circuitsim/devices/`` that
defines a :class:`DeviceFamily` subclass instance ``FAMILY`` and is listed in
``circuitsim/devices/registry.py``.  It declares its terminals, series resistances, ports,
outputs, parameter tables, instance scaling, theta layout and its equations (a
:class:`~circuitsim.devices.program.Program`); the torch evaluation, numba forward, Jacobian and
parameter VJP are generated from the program.  See docs/architecture.md, "Adding a device family".
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from circuitsim.devices.program import Generated, Program, _t, generate, torch_call

DTYPE = torch.float64


@dataclass(frozen=True)
class Output:
    """A device output: a current through (or a charge on) the branch ``plus -> minus`` (terminal names)."""

    name: str
    plus: str
    minus: str
    charge: bool = False


@dataclass(frozen=True)
class Limit:
    """SPICE junction limiting (DEVpnjlim) of port ``port``: thermal voltage and Vcrit (volts).

    ``vt`` is a number or the name of a layout slot; ``vcrit`` is a layout slot.
    """

    port: int
    vt: float | str
    vcrit: str


@dataclass(frozen=True)
class Extra:
    """A linear conductance a device adds (ngspice's substrate GMIN): ``ohms`` between two terminals.

    A terminal name refers to the node after the series resistances; ``"0"`` is ground.
    """

    name: str
    ohms: float
    plus: str
    minus: str


def param_value(p: Mapping[str, torch.Tensor | float], key: str, *tables: Mapping[str, float]) -> torch.Tensor:
    """``p[key]`` as a float64 tensor, else the first table's default for ``key``."""
    if key in p:
        return _t(p[key])
    for table in tables:
        if key in table:
            return torch.tensor(table[key], dtype=DTYPE)
    raise KeyError(key)


class DeviceFamily:
    """Base class of a device family; subclasses set the class attributes and :meth:`program`."""

    name: ClassVar[str]  # "diode"
    letter: ClassVar[str]  # the SPICE element letter, "D"
    model_types: ClassVar[tuple[str, ...]]  # .model types, ("D",)
    terminals: ClassVar[tuple[str, ...]]  # in netlist node order; optional trailing ones may be missing
    series: ClassVar[Mapping[str, str]] = {}  # terminal -> model parameter of its series resistance (ohms)
    ports: ClassVar[tuple[tuple[str, str], ...]]  # controlling voltages V(a) - V(b), terminals after series R
    outputs: ClassVar[tuple[Output, ...]]
    defaults: ClassVar[Mapping[str, float]]  # modelled model parameters with ngspice's defaults
    aliases: ClassVar[Mapping[str, str]] = {}
    silent: ClassVar[frozenset[str]] = frozenset()  # accepted, no effect at TEMP = TNOM
    unmodelled: ClassVar[frozenset[str]] = frozenset()  # accepted with a warning
    instance: ClassVar[Mapping[str, float]] = {}  # instance parameters with defaults
    scaling: ClassVar[tuple[str, ...]] = ()  # instance parameters that reach instance_params
    layout: ClassVar[tuple[str, ...]]  # the theta piece, slot names
    polarity_slot: ClassVar[str | None] = None  # slot holding +1 / -1: f(v) = s f_program(s v)
    limits: ClassVar[tuple[Limit, ...]] = ()
    charge_params: ClassVar[frozenset[str]] = frozenset()  # a card giving one of these has charge outputs
    inline: ClassVar[bool] = True  # inline the generated forward into the Newton loop

    # ---- equations
    def program(self, features: frozenset[str]) -> Program:
        """The device equations with the optional terms ``features`` (all of :attr:`all_features` = full)."""
        raise NotImplementedError

    all_features: ClassVar[frozenset[str]] = frozenset()

    def features(self, given: Collection[str]) -> frozenset[str]:
        """The optional terms a card needs: those whose parameters it gives (the rest are exactly zero)."""
        return frozenset(f for f in self.all_features if f in set(given))

    def code(self, features: frozenset[str] | None = None,
             outputs: Sequence[str] | None = None) -> tuple[Program, Generated, str]:
        """``(program, generated code, numba function name)`` of one variant (full when ``None``)."""
        feats = self.all_features if features is None else frozenset(features)
        names = tuple(o.name for o in self.outputs) if outputs is None else tuple(outputs)
        prog = self.program(feats).restricted(names)
        tag = hashlib.sha256(repr((sorted(feats), names)).encode()).hexdigest()[:10]
        fname = f"dev_{self.name}_{tag}"
        return prog, generate(prog, fname, self.inline), fname

    def evaluate(self, volts: Sequence[torch.Tensor], slots: Mapping[str, torch.Tensor],
                 features: frozenset[str] | None = None,
                 jacobian: bool = True) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Generated torch outputs and Jacobian at ``volts`` (program frame); ``slots`` keyed by parameter name."""
        prog, gen, _ = self.code(features)
        params = [slots[name] for name in prog.param_names]
        return torch_call(gen, prog, volts, params, jacobian)

    # ---- parameters
    def sign(self, model_type: str) -> float:
        """+1, or -1 where the polarity slot holds -1: a family with a polarity slot lists its
        N-type first and its P-type second in :attr:`model_types` (NPN/PNP, NJF/PJF, NMOS/PMOS)."""
        flipped = self.polarity_slot is not None and len(self.model_types) > 1 and model_type == self.model_types[1]
        return -1.0 if flipped else 1.0

    def instance_params(self, p: Mapping[str, torch.Tensor], inst: Mapping[str, torch.Tensor],
                        model_type: str) -> dict[str, torch.Tensor]:
        """Model parameters scaled for one instance (``inst`` holds the given :attr:`scaling` entries)."""
        return dict(p)

    def theta(self, p: Mapping[str, torch.Tensor], model_type: str) -> torch.Tensor:
        """The theta piece (:attr:`layout`) from instance parameters, differentiable."""
        raise NotImplementedError

    def extras(self, model_type: str, n_terminals: int) -> tuple[Extra, ...]:
        """Linear conductances the device adds (none by default)."""
        return ()

    def check(self, params: Mapping[str, float], series_present: Collection[str]) -> str | None:
        """A one-line reason the card cannot be modelled with these series resistances, or None."""
        return None


__all__ = ["DeviceFamily", "Extra", "Limit", "Output", "param_value"]
