"""The ngspice harness against analytic results: RC low-pass transient, divider and diode DC points."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import CubicSpline
from scipy.optimize import brentq

from circuitsim.spice import (
    SpiceError,
    _to_samples,
    operating_point_ngspice,
    simulate_ngspice,
    transient_ngspice,
)

pytestmark = pytest.mark.requires_ngspice

FS = 384000.0
H = 1.0 / FS
R, C = 1e3, 10e-9  # tau = 10 us
TAU = R * C

# ngspice const.h: CONSTboltz, CHARGE, and TEMP = TNOM = 27 C
K_BOLTZ = 1.38064852e-23
Q_E = 1.6021766208e-19
VT = K_BOLTZ * 300.15 / Q_E
GMIN = 1e-12

RC_NETLIST = f"""rc low-pass
VIN in 0 DC 0 AC 1
R1 in out {R}
C1 out 0 {C}
.tran 1u 1m
.end
"""


def write(tmp_path, name: str, text: str):
    p = tmp_path / name
    p.write_text(text)
    return p


def rc_exact_pwl(x: np.ndarray, fs: float, y0: float = 0.0):
    """Exact response of tau*y' + y = u to the piecewise-linear interpolation of samples x.

    Returns the samples y[k] and a function y(t) for arbitrary t in [0, (n-1)/fs].
    On [t_k, t_k+h] with slope s: y = u_k + s*(t-t_k) - s*tau + (y_k - u_k + s*tau) exp(-(t-t_k)/tau).
    """
    h = 1.0 / fs
    a = np.exp(-h / TAU)
    s = np.diff(x) / h
    y = np.empty(len(x))
    y[0] = y0
    for k in range(len(x) - 1):
        y[k + 1] = x[k + 1] - s[k] * TAU + (y[k] - x[k] + s[k] * TAU) * a

    def at(t: np.ndarray) -> np.ndarray:
        k = np.clip(np.floor(t * fs + 1e-9).astype(int), 0, len(x) - 2)
        dt = t - k * h
        return x[k] + s[k] * dt - s[k] * TAU + (y[k] - x[k] + s[k] * TAU) * np.exp(-dt / TAU)

    return y, at


def rc_exact_sine(t: np.ndarray, amp: float, w: float) -> np.ndarray:
    """tau*y' + y = amp*sin(w t), y(0) = 0: steady state plus the decaying transient."""
    wt = w * TAU
    return amp / (1 + wt**2) * (np.sin(w * t) - wt * np.cos(w * t) + wt * np.exp(-t / TAU))


def esr(y, ref):
    return float(np.sum((y - ref) ** 2) / np.sum(ref**2))


@pytest.fixture
def rc(tmp_path):
    return write(tmp_path, "rc.cir", RC_NETLIST)


# ---------------------------------------------------------------- transient against analytic solutions


@pytest.mark.parametrize("f0", [1000.0, 5000.0])
def test_rc_sine_matches_continuous_solution(rc, f0):
    """Against the continuous-time sine response: the only error left is filesource's linear
    interpolation of the input between samples, |x - x_pwl| <= (w h)^2/8 * amp, which a
    low-pass with |H| <= 1 and a positive impulse response cannot amplify."""
    n = 1920  # 5 ms
    amp, w = 1.0, 2 * np.pi * f0
    t = np.arange(n) * H
    x = amp * np.sin(w * t)
    y = simulate_ngspice(rc, x, FS)
    ref = rc_exact_sine(t, amp, w)
    bound = (w * H) ** 2 / 8 * amp
    err = np.max(np.abs(y - ref))
    assert err < 1.05 * bound + 1e-9
    # ... and the bound is not vacuous: the error is of that order (it is the input's interpolation)
    assert err > 0.2 * bound


@pytest.mark.parametrize("f0", [1000.0, 5000.0, 15000.0])
@pytest.mark.parametrize("tmax_div", [1, 4])
def test_rc_matches_exact_pwl_solution(rc, f0, tmax_div):
    """ngspice integrates the piecewise-linear input it is given: with reltol 1e-6, at TMAX = 1/fs as
    at the default 1/(4 fs), the output agrees with the exact PWL-input solution to ESR < 1e-8."""
    n = 1920
    x = np.sin(2 * np.pi * f0 * np.arange(n) * H)
    y = simulate_ngspice(rc, x, FS, tmax=H / tmax_div)
    ref, _ = rc_exact_pwl(x, FS)
    assert esr(y, ref) < 1e-8
    assert np.max(np.abs(y - ref)) < 3e-4 * np.max(np.abs(ref))


@pytest.mark.parametrize("tmax_div", [1, 4])
def test_interpolation_error_is_far_below_reference_accuracy(rc, tmax_div):
    """The interpolation from ngspice's time points to the sample instants, isolated: interpolate the
    *exact* solution sampled at ngspice's own time points and compare at the sample instants
    (the capacitor voltage is smooth, so every method but "linear" is far below 1e-8)."""
    n = 1920
    x = np.sin(2 * np.pi * 5000.0 * np.arange(n) * H)
    t_raw, y_raw = transient_ngspice(rc, x, FS, tmax=H / tmax_div)
    assert np.all(np.diff(t_raw) > 0)
    assert np.max(np.diff(t_raw)) <= H / tmax_div * (1 + 1e-9)  # TMAX is respected
    ref, exact_at = rc_exact_pwl(x, FS)
    ts = np.arange(n) * H
    exact_raw = exact_at(t_raw)
    cubic = CubicSpline(t_raw, exact_raw)(ts)
    linear = np.interp(ts, t_raw, exact_raw)
    piecewise = _to_samples(t_raw, exact_raw, FS, n, "piecewise")
    assert esr(cubic, ref) < 1e-9
    assert esr(piecewise, ref) < 1e-9
    assert esr(linear, ref) > 10 * esr(cubic, ref)
    # ngspice's own points carry the integration error only
    assert esr(y_raw, exact_raw) < 1e-8
    # simulate_ngspice = the chosen interpolation of the raw points
    y = simulate_ngspice(rc, x, FS, tmax=H / tmax_div, interpolation="cubic")
    assert np.max(np.abs(y - CubicSpline(t_raw, y_raw)(ts))) < 1e-12
    y = simulate_ngspice(rc, x, FS, tmax=H / tmax_div, interpolation="linear")
    assert np.max(np.abs(y - np.interp(ts, t_raw, y_raw))) < 1e-12


@pytest.mark.parametrize("f0", [5000.0, 20000.0])
def test_algebraic_output_needs_piecewise_interpolation(tmp_path, f0):
    """A memoryless output follows filesource's linearly interpolated input, kinks at every sample
    instant included.  A spline through ngspice's off-grid points misses the kinks by up to
    (w h)^2/8 of the amplitude; per-interval cubics at TMAX = 1/(4 fs) (the defaults) are exact."""
    net = write(tmp_path, "div.cir", "divider\nVIN in 0 DC 0\nR1 in out 1k\nR2 out 0 1k\n.end\n")
    x = np.sin(2 * np.pi * f0 * np.arange(500) * H)
    ref = x / 2
    bound = (2 * np.pi * f0 * H) ** 2 / 8 * 0.5
    e_cubic = np.max(np.abs(simulate_ngspice(net, x, FS, tmax=H, interpolation="cubic") - ref))
    assert 0.2 * bound < e_cubic < 1.05 * bound
    e_pw = np.max(np.abs(simulate_ngspice(net, x, FS) - ref))
    assert e_pw < 1e-12


def test_piecewise_interpolation_on_smooth_output(rc):
    n = 1920
    x = np.sin(2 * np.pi * 5000.0 * np.arange(n) * H)
    ref, _ = rc_exact_pwl(x, FS)
    y = simulate_ngspice(rc, x, FS)  # defaults: TMAX = 1/(4 fs), piecewise
    assert esr(y, ref) < 1e-9
    # at TMAX = 1/fs most intervals hold one or two points: those samples fall back to the spline
    y1 = simulate_ngspice(rc, x, FS, tmax=H, interpolation="piecewise")
    y_cubic = simulate_ngspice(rc, x, FS, tmax=H, interpolation="cubic")
    assert esr(y1, ref) <= esr(y_cubic, ref) * 1.01


def test_smaller_tmax_is_more_accurate(rc):
    n = 960
    x = np.sin(2 * np.pi * 5000.0 * np.arange(n) * H)
    ref, _ = rc_exact_pwl(x, FS)
    e1 = esr(simulate_ngspice(rc, x, FS, tmax=H), ref)
    e4 = esr(simulate_ngspice(rc, x, FS, tmax=H / 4), ref)
    assert e4 < e1


def test_repeated_calls_are_identical_and_backends_agree(rc):
    x = np.sin(2 * np.pi * 3000.0 * np.arange(400) * H)
    y1 = simulate_ngspice(rc, x, FS)
    y2 = simulate_ngspice(rc, x, FS)
    assert np.array_equal(y1, y2)
    y3 = simulate_ngspice(rc, x, FS, backend="pyspice")
    y4 = simulate_ngspice(rc, x, FS, backend="pyspice")
    assert np.max(np.abs(y3 - y1)) < 1e-12
    assert np.array_equal(y3, y4)
    op = operating_point_ngspice(rc, backend="pyspice")
    assert op["out"] == 0.0 and op["i(vin)"] == 0.0


# ---------------------------------------------------------------- DC operating points


def test_divider_operating_point(tmp_path):
    net = write(
        tmp_path,
        "div.cir",
        """divider with a subcircuit
.param rtop=10k
V1 top 0 DC 9
VIN in 0 DC 0
R1 top out {rtop}
R2 out 0 4.7k
X1 top 0 half
.subckt half a b
RA a m 1k
RB m b 3k
.ends half
.op
.end
""",
    )
    op = operating_point_ngspice(net)
    assert op["out"] == pytest.approx(9 * 4.7 / 14.7, rel=1e-12)
    assert op["x1.m"] == pytest.approx(9 * 3 / 4, rel=1e-12)
    # ngspice's branch current flows into the + node: the supply delivers, so it is negative
    assert op["i(v1)"] == pytest.approx(-(9 / 14.7e3 + 9 / 4e3), rel=1e-12)
    assert op["top"] == 9.0 and op["in"] == 0.0
    op2 = operating_point_ngspice(net, params={"rtop": 4.7e3})
    assert op2["out"] == pytest.approx(4.5, rel=1e-12)


def shockley_vd(v: float, r: float, isat: float, n: float) -> float:
    """Diode voltage of V -> R -> diode -> ground, ngspice level-1 diode with GMIN across the junction."""
    def kcl(vd: float) -> float:
        return (v - vd) / r - (isat * np.expm1(vd / (n * VT)) + GMIN * vd)

    return brentq(kcl, -v - 1, v + 1, xtol=1e-15, rtol=1e-15)


DIODE_NETLIST = """diode and resistor
VIN in 0 DC {v}
R1 in out 1k
D1 out 0 D1N914
.model D1N914 D(Is=2.52n N=1.752)
.end
"""


@pytest.mark.parametrize("v", [0.3, 1.0, 5.0])
def test_diode_operating_point_matches_shockley(tmp_path, v):
    net = write(tmp_path, "d.cir", DIODE_NETLIST.format(v=v))
    op = operating_point_ngspice(net)
    vd = shockley_vd(v, 1e3, 2.52e-9, 1.752)
    assert op["out"] == pytest.approx(vd, rel=1e-9, abs=1e-12)
    assert op["i(vin)"] == pytest.approx(-(v - vd) / 1e3, rel=1e-8)


def test_transient_starts_from_operating_point_of_first_sample(tmp_path):
    """A constant input of 0.8 V from t = 0: ngspice's OP uses the first sample, so the output is the
    Shockley solution at t = 0 and stays there (no charging transient from 0 V)."""
    text = DIODE_NETLIST.format(v=0).replace("R1 in out 1k", "R1 in out 1k\nC1 out 0 100n")
    net = write(tmp_path, "d.cir", text)
    x = np.full(200, 0.8)
    y = simulate_ngspice(net, x, FS)
    vd = shockley_vd(0.8, 1e3, 2.52e-9, 1.752)
    assert np.max(np.abs(y - vd)) < 1e-9


# ---------------------------------------------------------------- netlist handling


def test_param_override_and_continuation_lines(tmp_path):
    net = write(
        tmp_path,
        "p.cir",
        """params on continuation lines
.param rs=1k
+ rl={2*rs}  ; inline comment
VIN in 0 DC 0
R1 in out {rs}
R2 out 0 {rl}
.end
""",
    )
    x = np.linspace(0.0, 1.0, 50)
    y = simulate_ngspice(net, x, FS)
    assert np.max(np.abs(y - x * 2 / 3)) < 1e-12
    # rs=2k: rl={2*rs} follows the override
    y2 = simulate_ngspice(net, x, FS, params={"RS": 2e3})
    assert np.max(np.abs(y2 - x * 2 / 3)) < 1e-12
    y3 = simulate_ngspice(net, x, FS, params={"rl": 1e3})
    assert np.max(np.abs(y3 - x / 2)) < 1e-12
    with pytest.raises(SpiceError, match="no top-level .param named nope"):
        simulate_ngspice(net, x, FS, params={"nope": 1.0})


def test_input_source_current_still_available(tmp_path):
    """A CCVS senses VIN's current: the harness keeps VIN as a 0 V source in series with the input."""
    net = write(
        tmp_path,
        "h.cir",
        """current-sensing
VIN in 0 DC 0
R1 in 0 2k
H1 out 0 VIN 1k
.end
""",
    )
    x = np.sin(2 * np.pi * 1000.0 * np.arange(100) * H)
    # ngspice: i(VIN) flows from + through the source, so i = -V(in)/2k and V(out) = 1k * i
    y = simulate_ngspice(net, x, FS)
    assert np.max(np.abs(y + x / 2)) < 1e-12


def test_include_relative_to_netlist_and_other_names(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "models.lib").write_text(".model DX D(Is=1e-14)\n")
    net = write(
        tmp_path,
        "inc.cir",
        """include test
.include lib/models.lib
VSIG a 0 DC 0
R1 a b 1k
R2 b 0 1k
D1 0 b DX
.control
run
.endc
.tran 1u 1m
.end
""",
    )
    monkeypatch.chdir("/")
    x = np.linspace(0.0, 0.1, 20)
    y = simulate_ngspice(net, x, FS, input_source="vsig", output_node="b")
    assert np.max(np.abs(y - x / 2)) < 1e-6  # reverse-biased diode: 1e-14 A + GMIN


def test_single_sample_and_empty_input(rc):
    assert simulate_ngspice(rc, np.array([0.25]), FS).shape == (1,)
    assert simulate_ngspice(rc, np.array([0.25]), FS)[0] == pytest.approx(0.25, abs=1e-12)
    assert simulate_ngspice(rc, np.zeros(0), FS).shape == (0,)


def test_errors_are_one_line_and_name_the_problem(tmp_path, rc):
    x = np.zeros(10)
    bad = write(tmp_path, "bad.cir", "bad\nVIN in 0 DC 0\nQ1 a b\n.end\n")
    bad_param = write(tmp_path, "bp.cir", "bp\nVIN in 0 DC 0\nR1 in 0 {nope}\n.end\n")
    cases = [
        (lambda: simulate_ngspice(tmp_path / "missing.cir", x, FS), "not found"),
        (lambda: simulate_ngspice(rc, x, FS, input_source="VX"), "no top-level voltage source named 'VX'"),
        (lambda: simulate_ngspice(rc, x, FS, output_node="nosuch"), "'nosuch' is not a node"),
        (lambda: operating_point_ngspice(bad), "ngspice failed"),
        (lambda: simulate_ngspice(bad_param, x, FS), "ngspice failed"),
    ]
    for fn, pattern in cases:
        with pytest.raises(SpiceError) as info:
            fn()
        msg = str(info.value)
        assert pattern in msg
        assert "\n" not in msg
    with pytest.raises(ValueError):
        simulate_ngspice(rc, np.array([0.0, np.nan]), FS)
    with pytest.raises(ValueError):
        simulate_ngspice(rc, x, -1.0)


def test_lines_after_end_are_ignored(tmp_path):
    net = write(tmp_path, "e.cir", "after end\nVIN in 0 DC 0\nR1 in out 1k\nR2 out 0 1k\n.end\nR3 out 0 1k\n")
    x = np.linspace(0.0, 1.0, 20)
    assert np.max(np.abs(simulate_ngspice(net, x, FS) - x / 2)) < 1e-12
    assert operating_point_ngspice(net)["out"] == 0.0


def test_validate_with_ground_called_gnd(tmp_path):
    """KiCad names ground GND; the harness must drive the XSPICE input with node 0 (a floating GND gave ESR 1e17)."""
    from circuitsim.validate import validate

    path = write(tmp_path, "gnd.cir", "rc with GND\nVIN in GND DC 0\nR1 in out 1k\nC1 out GND 1u\n.end\n")
    report = validate(path, method="mna", duration=0.002)
    assert len(report.signals) == 5
    # the trapezoidal rule at 384 kHz on a 160 Hz RC corner: well inside the acceptance bound 1e-5
    assert max(r.esr for r in report.signals) < 1e-6, report.table()
    assert all(r.peak > 1e-3 for r in report.signals)
