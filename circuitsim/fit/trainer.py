"""Fit component values of circuitsim modules to recordings: Levenberg-Marquardt or Adam.

Values are optimised in log space where they must be positive (R, L, C, IS, N, BF, ...), so
a step can never flip a sign and relative changes are what the optimiser sees.  The LM path
uses ``scipy.optimize.least_squares`` with a central-difference Jacobian of the residual
vector computed on the compiled forward pass (2P forward runs per Jacobian, P = number of
learned values): for the 3-20 unknowns of a white-box circuit this is cheaper than the
N reverse-mode passes an exact autograd Jacobian would need (docs/fitting.md).  Adam uses the
compiled adjoint's gradient.

With ``learn_gain`` one more unknown, log g, scales the simulated output in the loss (a
recording made at an unknown level): it is shared by all recordings, starts at the
least-squares optimum ``g0 = <a, b> / <a, a>`` of the initial simulation (a the emphasised,
normalised simulation, b the same for the reference; the residual is affine in g), and is
reported but never written into the netlist.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from circuitsim.errors import UnknownNameError, UsageError
from circuitsim.fit.data import Decimator, FitData, training_batch, upsample
from circuitsim.fit.losses import Emphasis, check_emphasis, dc_loss, emphasize, residual, stft_loss
from circuitsim.formulations.base import AbstractCircuitModule
from circuitsim.validate import esr

# SPICE model parameters that are positive by definition (ngspice dio/bjt parameter tables)
POSITIVE_MODEL_PARAMS = {
    "IS", "N", "RS", "CJO", "CJ0", "TT", "BV", "IBV", "BF", "BR", "NF", "NR", "ISE", "ISC", "NE", "NC",
    "VAF", "VAR", "VA", "VB", "IKF", "IKR", "RB", "RE", "RC", "CJE", "CJC", "TF", "TR", "RBM", "IRB",
}
DEFAULT_MODEL_PARAMS = ("IS", "N", "BF")
GAIN_NAME = "output gain"  # the learned output gain's name in reports and Jacobian columns
# LM stops when a step lowers the cost by less than this fraction of it.  Near the minimum the
# excess cost is (1/2) d^T H d, so the values are then within sqrt(2 FTOL cost / lambda_min) of
# the optimum in log space -- ~3e-6 on the clipper and TS-808 fits, far below their 1e-4
# accuracy -- while 1e-12 spent 10-20 % more simulations on steps that changed nothing.
FTOL = 1e-8


def _canonical(model: AbstractCircuitModule, name: str) -> str:
    for n in model._leaf_names:
        if n.lower() == name.lower():
            return n
    raise UnknownNameError(f"no value named '{name}' in the netlist (values: {', '.join(model._leaf_names)})")


def default_learnable(model: AbstractCircuitModule) -> list[str]:
    """All R, L and C values plus the IS, N and BF of every diode/BJT model (the CLI's ``--learn`` default).

    Values computed from ``.param`` knobs (pots written as ``{expr}``) are not leaves and are
    therefore never included.
    """
    out = []
    for name, leaf in model.circuit.params.items():
        if leaf.kind.value == "control":
            continue
        last = name.split(".")[-1].upper()
        if "." in name and last in DEFAULT_MODEL_PARAMS and _is_model_param(model, name):
            out.append(name)
        elif "." not in name or not _is_model_param(model, name):
            if last[:1] in ("R", "L", "C") and leaf.positive:
                out.append(name)
    return out


def _is_model_param(model: AbstractCircuitModule, name: str) -> bool:
    prefix = name.rsplit(".", 1)[0].upper()
    for el in model.circuit.elements:
        if el.model is not None and (el.model.name.upper() == prefix or el.model.name.upper().endswith("." + prefix)):
            return True
    return False


def _uses_log(model: AbstractCircuitModule, name: str, value: float) -> bool:
    if value <= 0:
        return False
    leaf = model.circuit.params[name]
    if leaf.kind.value == "control":  # a learned .param (a pot track, a knob): positive values stay positive
        return True
    return bool(leaf.positive) or ("." in name and name.split(".")[-1].upper() in POSITIVE_MODEL_PARAMS)


@dataclass
class GroupResult:
    """ESR of one recording before and after the fit, on the trained part and on the held-out tail."""

    name: str
    params: dict[str, float]
    esr_train_before: float
    esr_train_after: float
    esr_holdout_before: float
    esr_holdout_after: float
    output_before: np.ndarray | None = None
    output_after: np.ndarray | None = None


@dataclass
class FitResult:
    """What :func:`fit` found: values by netlist name (SI units), losses and the Jacobian at the solution."""

    names: list[str]
    initial: dict[str, float]
    fitted: dict[str, float]
    log_space: dict[str, bool]
    groups: list[GroupResult]
    history: list[float]
    jacobian: np.ndarray | None  # d residual / d theta at the solution (theta = log value or value; see columns)
    seconds: float
    evaluations: int
    interrupted: bool = False
    message: str = ""
    data: list[FitData] = field(default_factory=list, repr=False)
    gain: float | None = None  # learned output gain (dimensionless), None without learn_gain
    gain_initial: float | None = None  # its starting value: least-squares optimum for the initial values

    @property
    def columns(self) -> list[str]:
        """Names of the Jacobian's columns: the learned values, then ``"output gain"`` when it was learned."""
        return [*self.names, GAIN_NAME] if self.gain is not None else list(self.names)

    @property
    def relative_change(self) -> dict[str, float]:
        return {n: (self.fitted[n] - self.initial[n]) / self.initial[n] if self.initial[n] else math.nan
                for n in self.names}


class _Problem:
    """The learned values as a vector theta and the residual of every recording as a function of it."""

    def __init__(self, models, data, names, oversample, segment, burn_in, emphasis, dc_weight, stft_weight,
                 learn_gain=False):
        self.models, self.data, self.names = models, data, names
        self.learn_gain, self.n_values = bool(learn_gain), len(names)
        self.oversample = int(oversample)
        self.decimate = Decimator(self.oversample)
        self.emphasis, self.dc_weight, self.stft_weight = check_emphasis(emphasis), dc_weight, stft_weight
        m0 = models[0]
        self.initial = np.array([float(m0.parameter(n).detach()) for n in names])
        self.log = np.array([_uses_log(m0, n, v) for n, v in zip(names, self.initial)])
        # knobs a recording does not set keep the value they had before the fit
        self.knobs = {_canonical(m0, k): float(m0.parameter(k).detach()) for d in data for k in d.params}
        self.batches = [  # per recording: the training part as a batch of rows at the simulation rate
            training_batch(upsample(d.input, self.oversample), d.target, self.oversample, d.split,
                           max(int(segment), 1) if segment else None, int(burn_in))
            for d in data
        ]
        self._cache: tuple[bytes, list[torch.Tensor]] | None = None  # outputs of the last simulated values
        self._jacobian: tuple[tuple, np.ndarray] | None = None  # the last Jacobian and where it was taken
        self.evaluations = 0
        self.history: list[float] = []
        self.gain_initial = self.least_squares_gain(self.to_theta(self.initial)) if self.learn_gain else 1.0
        self.best_cost, self.best_theta = math.inf, self.initial_theta()

    def initial_theta(self) -> np.ndarray:
        """theta at the start: the log/linear values, then log g when the gain is learned."""
        theta = self.to_theta(self.initial)
        return np.append(theta, math.log(self.gain_initial)) if self.learn_gain else theta

    def gain(self, theta: np.ndarray) -> float:
        """Output gain g (dimensionless) encoded in theta: exp of its last entry, or 1."""
        return math.exp(theta[self.n_values]) if self.learn_gain else 1.0

    def to_theta(self, values: np.ndarray) -> np.ndarray:
        return np.where(self.log, np.log(np.abs(values)), values)

    def to_values(self, theta: np.ndarray) -> np.ndarray:
        return np.where(self.log, np.exp(theta), theta)

    def model_for(self, k: int) -> AbstractCircuitModule:
        return self.models[k] if len(self.models) > 1 else self.models[0]

    def apply(self, theta: np.ndarray, k: int) -> AbstractCircuitModule:
        m = self.model_for(k)
        for n, v in zip(self.names, self.to_values(theta[: self.n_values])):
            m.set_value(n, float(v))
        for n, v in {**self.knobs, **{_canonical(m, a): b for a, b in self.data[k].params.items()}}.items():
            m.set_value(n, v)
        return m

    def outputs(self, k: int) -> torch.Tensor:
        """Simulated output (volts) of recording k's training rows at the recording rate, burn-in included."""
        b = self.batches[k]
        y = self.model_for(k)(b.x)
        return self.decimate(y if b.mask is None else y * b.mask)[..., : b.keep]

    def simulate(self, theta: np.ndarray) -> list[torch.Tensor]:
        """Scored outputs (volts, gain not applied) of every recording for the values in theta.

        The last result is cached, so residuals that differ only in the gain cost no simulation.
        """
        key = np.asarray(theta[: self.n_values], dtype=np.float64).tobytes()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        ys = []
        with torch.no_grad():
            for k in range(len(self.data)):
                self.apply(theta, k)
                ys.append(self.outputs(k)[..., self.batches[k].skip:])
        self.evaluations += 1
        self._cache = (key, ys)
        return ys

    def least_squares_gain(self, theta_values: np.ndarray) -> float:
        """Gain minimising the (emphasised) ESR residual for these values: ``<a, b> / <a, a>``.

        The residual is affine in g, ``r(g) = g a - b``, so ``a = r(1) - r(0)`` and ``b = -r(0)``.
        Falls back to 1 when the optimum is not a positive number.
        """
        num = den = 0.0
        with torch.no_grad():
            for k, y in enumerate(self.simulate(theta_values)):
                ref = self.batches[k].target[..., self.batches[k].skip:]
                fs = self.data[k].sample_rate
                r0 = residual(torch.zeros_like(y), ref, self.emphasis, fs)
                a = residual(y, ref, self.emphasis, fs) - r0
                num += float(-(a @ r0))
                den += float(a @ a)
        g = num / den if den > 0 else math.nan
        return g if math.isfinite(g) and g > 0 else 1.0

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        """Stacked residual: per recording ESR residual (sum of squares = sum of ESRs), plus a DC term."""
        parts = []
        g = self.gain(theta)
        with torch.no_grad():
            for k, y in enumerate(self.simulate(theta)):
                y, ref = g * y, self.batches[k].target[..., self.batches[k].skip:]
                parts.append(residual(y, ref, self.emphasis, self.data[k].sample_rate))
                if self.dc_weight:
                    parts.append(torch.sqrt(self.dc_weight * dc_loss(y, ref)).reshape(1))
        r = torch.cat(parts).numpy()
        cost = float(r @ r)
        if math.isfinite(cost) and cost < self.best_cost:
            self.best_cost, self.best_theta = cost, theta.copy()
        return r

    def loss_and_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """Scalar loss (sum over recordings) and its gradient with respect to theta (compiled adjoint)."""
        grad = np.zeros(len(theta))
        total = 0.0
        values = self.to_values(theta[: self.n_values])
        g = self.gain(theta)
        for k in range(len(self.data)):
            m = self.apply(theta, k)
            params = [m.parameter(n) for n in self.names]
            for p in params:
                p.requires_grad_(True)
                p.grad = None
            g_t = torch.tensor(g, dtype=torch.float64, requires_grad=self.learn_gain)
            y = self.outputs(k)
            skip = self.batches[k].skip
            y, ref = g_t * y[..., skip:], self.batches[k].target[..., skip:]
            r = residual(y, ref, self.emphasis, self.data[k].sample_rate)
            loss = r @ r
            if self.dc_weight:
                loss = loss + self.dc_weight * dc_loss(y, ref)
            if self.stft_weight:
                fs = self.data[k].sample_rate
                ye, re_ = emphasize(y, self.emphasis, fs), emphasize(ref, self.emphasis, fs)
                loss = loss + self.stft_weight * stft_loss(ye, re_)
            loss.backward()
            dv = np.array([float(p.grad) if p.grad is not None else 0.0 for p in params])
            grad[: self.n_values] += np.where(self.log, dv * values, dv)  # chain rule through value = exp(theta)
            if self.learn_gain:
                grad[self.n_values] += float(g_t.grad) * g  # d/d(log g) = g d/dg
            total += float(loss.detach())
        self.evaluations += 1
        if math.isfinite(total) and total < self.best_cost:
            self.best_cost, self.best_theta = total, theta.copy()
        return total, grad

    def jacobian(self, theta: np.ndarray, step: float = 1e-6, scheme: str = "central") -> np.ndarray:
        """Finite differences of the residual vector in theta (relative step for linear values).

        ``scheme="central"``: 2 simulations per column, error O(step^2); ``"forward"``: 1 per column
        plus the residual at theta (usually cached: LM asks for the Jacobian where it has just
        evaluated the residual), error O(step) -- about 1e-6 relative, which moves LM's solution
        by far less than the data's noise (the solution is where J^T r = 0 with r ~ 0).  The
        gain's column comes first: its residuals reuse the cached simulation at theta.
        """
        key = (np.asarray(theta, dtype=np.float64).tobytes(), step, scheme)
        if self._jacobian is not None and self._jacobian[0] == key:
            return self._jacobian[1]
        cols = {}
        log = np.append(self.log, True) if self.learn_gain else self.log
        r0 = self.residuals(theta) if scheme == "forward" else None
        for i in sorted(range(len(theta)), key=lambda j: j != self.n_values):
            h = step if log[i] else step * max(abs(theta[i]), 1e-12)
            tp, tm = theta.copy(), theta.copy()
            tp[i] += h
            tm[i] -= h
            if r0 is not None:
                cols[i] = (self.residuals(tp) - r0) / h
            else:
                cols[i] = (self.residuals(tp) - self.residuals(tm)) / (2 * h)
        jac = np.stack([cols[i] for i in range(len(theta))], axis=1)
        self._jacobian = (key, jac)  # LM's last Jacobian is usually the one at the solution: reused for the report
        return jac

    def evaluate(self, theta: np.ndarray, keep_outputs: bool) -> list[tuple[float, float, np.ndarray]]:
        """(train ESR, held-out ESR, output) for every recording, simulating each whole file from its start."""
        out = []
        g = self.gain(theta)
        with torch.no_grad():
            for k, d in enumerate(self.data):
                m = self.apply(theta, k)
                x = torch.tensor(upsample(d.input[None, :], self.oversample))
                y = g * self.decimate(m(x))[0].numpy()[: len(d.target)]
                s = d.split
                e_train = esr(y[:s], d.target[:s])
                e_hold = esr(y[s:], d.target[s:]) if len(d.target) - s > 1 else math.nan
                out.append((e_train, e_hold, y if keep_outputs else None))
        return out


def fit(
    models: AbstractCircuitModule | Sequence[AbstractCircuitModule],
    data: FitData | Sequence[FitData],
    learn: Sequence[str] | None = None,
    *,
    freeze: Sequence[str] = (),
    optimizer: str = "lm",
    steps: int = 100,
    lr: float = 0.01,
    oversample: int = 1,
    segment: int | None = None,
    burn_in: int = 0,
    emphasis: Emphasis = 0.0,
    dc_weight: float = 0.0,
    stft_weight: float = 0.0,
    learn_gain: bool = False,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    progress: bool = True,
    keep_outputs: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Fit the values ``learn`` (netlist names; default :func:`default_learnable`) to the recordings ``data``.

    ``models`` is one module (its knobs are set to each recording's ``params`` in turn) or one
    module per recording; every model must run at ``oversample`` times the recordings' rate.
    ``optimizer`` is ``"lm"`` (``scipy.optimize.least_squares``, trust-region reflective;
    ``steps`` bounds the residual evaluations per parameter) or ``"adam"`` (``steps``
    iterations at learning rate ``lr`` in log-value space).  ``segment``/``burn_in`` (samples
    at the recording rate) cut the training part into a batch of segments whose first
    ``burn_in`` samples are not scored.  ``emphasis`` is the pre-emphasis: a first-order
    coefficient (0 = none, 0.85 typical) or ``"aw"`` (A-weighting, Wright & Valimaki, ICASSP
    2020, at the recordings' rate); ``dc_weight`` and ``stft_weight`` weight the DC and
    multi-resolution STFT terms (the STFT term is not a sum of squares: Adam only, LM raises
    a ValueError).  ``learn_gain`` also learns one output gain g (dimensionless, optimised as
    log g from the least-squares optimum of the initial simulation) that multiplies the
    simulated output of every recording in the loss and in the reported ESRs, for recordings
    made at an unknown level; it is returned as ``FitResult.gain`` and never written into the
    model.  ``bounds`` maps names to (low, high) values.
    Ctrl-C stops the optimisation and keeps the best values seen so far.
    """
    from scipy.optimize import least_squares
    from tqdm import tqdm

    t0 = time.perf_counter()
    models = [models] if isinstance(models, AbstractCircuitModule) else list(models)
    data = [data] if isinstance(data, FitData) else list(data)
    if not data:
        raise UsageError("no recordings to fit")
    if len(models) not in (1, len(data)):
        raise UsageError(f"give one model or one per recording: {len(models)} models, {len(data)} recordings")
    for d in data:
        for m in models:
            if abs(m.sample_rate - d.sample_rate * oversample) > 1e-6 * m.sample_rate:
                raise UsageError(f"{d.name}: model runs at {m.sample_rate:g} Hz, expected {d.sample_rate:g} Hz x "
                                 f"{oversample} = {d.sample_rate * oversample:g} Hz")
        for n in d.params:
            _canonical(models[0], n)
    names = [_canonical(models[0], n) for n in (default_learnable(models[0]) if learn is None else learn)]
    frozen = {_canonical(models[0], n) for n in freeze}
    names = [n for n in dict.fromkeys(names) if n not in frozen]
    if not names:
        raise UsageError("nothing to learn (every value is frozen)")
    per_recording = {_canonical(models[0], k) for d in data for k in d.params}
    for n in names:
        if n in per_recording:
            raise UsageError(f"'{n}' is set per recording (--set), so it cannot also be learned")
    if optimizer not in ("lm", "adam"):
        raise UsageError(f"optimizer must be 'lm' or 'adam', got '{optimizer}'")
    if dc_weight < 0 or stft_weight < 0:
        raise UsageError(f"loss weights must be >= 0 (dc_weight={dc_weight:g}, stft_weight={stft_weight:g})")
    if stft_weight and optimizer == "lm":
        raise UsageError("the STFT loss is not a sum of squares, so LM cannot use it: pick the Adam optimizer "
                         "(--optimizer adam)")

    prob = _Problem(models, data, names, oversample, segment, burn_in, emphasis, dc_weight, stft_weight,
                    learn_gain)
    theta0 = prob.initial_theta()
    lo = np.full(len(theta0), -np.inf)
    hi = np.full(len(theta0), np.inf)
    for n, (a, b) in (bounds or {}).items():
        i = names.index(_canonical(models[0], n))
        lo[i], hi[i] = prob.to_theta(np.array([a]))[0] if prob.log[i] else a, (
            prob.to_theta(np.array([b]))[0] if prob.log[i] else b)
    before = prob.evaluate(theta0, keep_outputs)

    bar = tqdm(total=steps, disable=not progress, desc=f"fit ({optimizer})", unit="step")
    interrupted, message = False, ""
    try:
        if optimizer == "lm":
            def fun(theta: np.ndarray) -> np.ndarray:
                r = prob.residuals(theta)
                prob.history.append(float(r @ r))
                bar.set_postfix(loss=f"{prob.best_cost:.3e}")
                bar.update(1)
                if callback:
                    callback(len(prob.history), prob.history[-1])
                return r

            def jac(theta: np.ndarray) -> np.ndarray:
                return prob.jacobian(theta, scheme="forward")

            sol = least_squares(fun, theta0, jac=jac, method="trf",
                                bounds=(lo, hi), x_scale=1.0, max_nfev=steps, xtol=1e-12, ftol=FTOL, gtol=1e-12)
            message = str(sol.message)
        else:
            theta = torch.tensor(theta0, requires_grad=True)
            opt = torch.optim.Adam([theta], lr=lr)
            lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
            for i in range(steps):
                loss, g = prob.loss_and_grad(theta.detach().numpy().copy())
                prob.history.append(loss)
                theta.grad = torch.tensor(g)
                opt.step()
                with torch.no_grad():
                    theta.copy_(torch.maximum(torch.minimum(theta, hi_t), lo_t))
                bar.set_postfix(loss=f"{prob.best_cost:.3e}")
                bar.update(1)
                if callback:
                    callback(i, loss)
            message = f"{steps} Adam steps"
    except KeyboardInterrupt:
        interrupted, message = True, "interrupted (Ctrl-C): keeping the best values so far"
    finally:
        bar.close()
    theta_best = prob.best_theta
    fitted = prob.to_values(theta_best[: len(names)])
    jacobian = None
    if not interrupted:
        jacobian = prob.jacobian(theta_best, scheme="forward")
    after = prob.evaluate(theta_best, keep_outputs)
    prob.apply(theta_best, 0)
    for m in models:
        for n, v in zip(names, fitted):
            m.set_value(n, float(v))
    groups = [
        GroupResult(d.name, dict(d.params), b[0], a[0], b[1], a[1], b[2], a[2])
        for d, b, a in zip(data, before, after)
    ]
    return FitResult(
        names=names, initial=dict(zip(names, prob.initial.tolist())), fitted=dict(zip(names, fitted.tolist())),
        log_space=dict(zip(names, prob.log.tolist())), groups=groups, history=prob.history, jacobian=jacobian,
        seconds=time.perf_counter() - t0, evaluations=prob.evaluations, interrupted=interrupted,
        message=message, data=data, gain=prob.gain(theta_best) if learn_gain else None,
        gain_initial=prob.gain_initial if learn_gain else None,
    )
