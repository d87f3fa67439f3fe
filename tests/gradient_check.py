"""Central differences of ``sum(y**2)``: the oracle of the gradient tests that run through substeps
(tests/test_tube_preamp.py, tests/test_local_error.py), where no plain-torch formulation follows the same
schedule of segments."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def loss_gradients(model: torch.nn.Module, x: np.ndarray, name: str, sample: int) -> tuple[float, float]:
    """d(sum y^2)/d``name`` and d(sum y^2)/d``x[sample]`` (per volt) by the model's own backward pass."""
    u = torch.as_tensor(x).requires_grad_(True)
    (model(u) ** 2).sum().backward()
    return float(model.parameter(name).grad), u.grad[sample].item()


def central_differences(model: torch.nn.Module, x: np.ndarray, run: Callable[[np.ndarray], np.ndarray], name: str,
                        nominal: float, h: float, sample: int, du: float = 1e-6) -> tuple[float, float]:
    """The same two derivatives by central differences of ``run`` (input volts -> output volts), with ``name``
    moved by ``h`` about ``nominal`` and ``x[sample]`` by ``du`` volts; leaves ``name`` at ``nominal``."""

    def value(r: float, d: float) -> float:
        model.set_value(name, r)
        xx = x.copy()
        xx[sample] += d
        return float((run(xx) ** 2).sum())

    fd_r = (value(nominal + h, 0) - value(nominal - h, 0)) / (2 * h)
    fd_u = (value(nominal, du) - value(nominal, -du)) / (2 * du)
    return fd_r, fd_u
