"""Diode and Gummel-Poon BJT models: numba vs torch, analytic vs autograd Jacobians, and ngspice 39.

The ngspice comparisons run DC sweeps and read the device's own state (``@d1[vd]``, ``@d1[id]``,
``@q1[vbe]``, ``@q1[ic]``, ...): ngspice can accept a Newton step whose source currents still
come from the linearisation at the previous sweep point, whereas the device state always holds
the voltage the model was evaluated at and the currents, charges, conductances and capacitances
it produced there.  The models are evaluated at those voltages and must agree to 1e-9 relative.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

import circuitsim.devices.diode as diode_module
from circuitsim.devices import vecmath
from circuitsim.devices.bjt import (
    BJT_ALIASES,
    BJT_DEFAULTS,
    BJT_SILENT,
    BJT_UNMODELLED,
    bjt_instance_params,
    bjt_junctions,
    bjt_qbx,
)
from circuitsim.devices.bjt import _npn as bjt_npn_torch
from circuitsim.devices.constants import VT
from circuitsim.devices.diode import (
    DIODE_ALIASES,
    DIODE_DEFAULTS,
    DIODE_SILENT,
    DIODE_UNMODELLED,
    diode_instance_params,
    diode_junction,
    diode_model,
)
from circuitsim.devices.program import Program
from circuitsim.kernels.devices import (
    BJT_LAYOUT,
    BJT_PARAM_ORDER,
    DIODE_LAYOUT,
    DIODE_PARAM_ORDER,
    bjt_nb,
    bjt_params_torch,
    bjt_params_vector,
    bjt_vjp_nb,
    diode_nb,
    diode_params_torch,
    diode_params_vector,
    diode_vjp_nb,
)
from circuitsim.netlist.units import parse_number

F64 = torch.float64
NGSPICE = shutil.which("ngspice")
needs_ngspice = pytest.mark.requires_ngspice

DIODE_CARDS = {
    "1N914": "Is=2.52n N=1.752",
    "1N4148": "Is=2.52n Rs=.568 N=1.752 Cjo=4p M=.4 tt=20n",
    # a vendor 1N4148 card: the breakdown voltage needs diotemp.c's fixed-point fit
    "1N4148_bv": "IS=4.352n N=1.906 BV=110 IBV=0.0001 RS=0.6458 CJO=7.048p VJ=0.869 M=0.03 FC=0.5 TT=3.48n",
    # knee currents, breakdown with its own NBV, a grading coefficient ngspice limits to 0.9
    "zener_knee": "Is=1e-14 N=1.2 BV=5.1 IBV=5m NBV=1.5 IKF=50m IKR=20m Cjo=100p VJ=0.6 M=0.95 FC=0.6 TT=5n",
    # recombination current
    "recomb": "Is=1e-12 N=1.05 ISR=1e-9 NR=2 Cjo=50p VJ=0.4 M=0.5",
    # FC*VJ > 1: ngspice limits VJ to 1/FC (but not inside F1)
    "vj_limited": "Is=1e-12 CJO=10p VJ=3 FC=0.5 M=0.3 TT=1n",
}
BJT_CARDS = {
    "2N3904": ("NPN", "Is=6.734f Xti=3 Eg=1.11 Vaf=74.03 Bf=416.4 Ne=1.259 Ise=6.734f Ikf=66.78m Xtb=1.5 "
                      "Br=.7371 Nc=2 Isc=0 Ikr=0 Rc=1 Cjc=3.638p Mjc=.3085 Vjc=.75 Fc=.5 Cje=4.493p "
                      "Mje=.2593 Vje=.75 Tr=239.5n Tf=301.2p Itf=.4 Vtf=4 Xtf=2 Rb=10"),
    "2N3906": ("PNP", "Is=1.41f Xti=3 Eg=1.11 Vaf=18.7 Bf=180.7 Ne=1.5 Ise=0 Ikf=80m Xtb=1.5 Br=4.977 Nc=2 "
                      "Isc=0 Ikr=0 Rc=2.5 Cjc=9.728p Mjc=.5776 Vjc=.75 Fc=.5 Cje=8.063p Mje=.3677 Vje=.75 "
                      "Tr=33.42n Tf=179.3p Itf=.4 Vtf=4 Xtf=6 Rb=10"),
    # every modelled Gummel-Poon term: both Early voltages, both knees with NKF, both leakages,
    # XCJC < 1 (with RB = 0 the remainder sits on the same branch), XTF/VTF/ITF
    "gp_full": ("NPN", "IS=1e-15 BF=200 NF=1.02 VAF=50 VAR=20 IKF=10m IKR=5m NKF=0.6 ISE=1e-13 NE=1.8 BR=3 "
                       "NR=1.05 ISC=1e-12 NC=1.7 CJE=10p VJE=0.8 MJE=0.4 CJC=5p VJC=0.6 MJC=0.45 XCJC=0.7 "
                       "TF=0.5n XTF=3 VTF=2 ITF=0.05 TR=10n FC=0.7"),
    # SPICE2 conventions and limits: ISE/ISC > 1e-4 multiply IS, IBE/IBC replace IS, MJE and FC limited
    "spice2_limits": ("PNP", "IS=1e-14 ISE=100 NE=2 ISC=1000 NC=2 IBE=2e-14 IBC=3e-14 IKF=0.1 CJE=1p MJE=1.2 "
                             "CJC=2p FC=1.5 TF=1n"),
}


def card_params(card: str, aliases: Mapping[str, str]) -> dict[str, float]:
    """``{PARAM: value}`` of a ``.model`` parameter list (canonical names, SI values)."""
    out = {}
    for key, val in re.findall(r"([A-Za-z_]\w*)\s*=\s*([^\s()]+)", card):
        value = parse_number(val)
        assert value is not None, val
        out[aliases.get(key.upper(), key.upper())] = value
    return out


def tensors(p: Mapping[str, float]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=F64) for k, v in p.items()}


def without_resistances(card: str) -> str:
    return re.sub(r"\b(R[SBCE])\s*=\s*[^\s()]+", "", card, flags=re.IGNORECASE)


def diode_grid(p: Mapping[str, float]) -> np.ndarray:
    """Deep reverse, breakdown, reverse, around -3 N Vt, forward, beyond FC*VJ, high injection."""
    bv = p.get("BV", np.inf)
    pts = [np.linspace(-300.0, -2.0, 40), np.linspace(-2.0, 1.6, 361), [-3 * p.get("N", 1.0) * VT * 1.0001]]
    if np.isfinite(bv):
        pts.append(np.linspace(-bv - 1.0, -bv + 1.0, 41))
    return np.concatenate(pts)


def bjt_grid() -> tuple[np.ndarray, np.ndarray]:
    vbe, vbc = np.meshgrid(np.concatenate([[-20.0, -5.0], np.linspace(-1.0, 1.05, 42)]),
                           np.concatenate([[-30.0, -8.0], np.linspace(-2.0, 0.95, 31)]))
    return vbe.ravel(), vbc.ravel()


def assert_close(actual, expected, rtol: float, atol: float, what: str) -> None:
    a = np.asarray(actual, dtype=float)
    e = np.asarray(expected, dtype=float)
    bad = np.abs(a - e) > rtol * np.abs(e) + atol
    if bad.any():
        k = int(np.argmax(np.abs(a - e) / (rtol * np.abs(e) + atol)))
        raise AssertionError(f"{what}: {int(bad.sum())} of {a.size} differ; worst at index {k}: "
                             f"{a.flat[k]!r} vs {e.flat[k]!r}")


# ----------------------------------------------------------------------------- numba vs torch


@pytest.mark.parametrize("name", list(DIODE_CARDS))
def test_diode_numba_matches_torch(name: str) -> None:
    p = card_params(DIODE_CARDS[name], DIODE_ALIASES)
    vec = diode_params_vector(p)
    assert vec.shape == (len(DIODE_LAYOUT),)
    np.testing.assert_array_equal(vec, diode_params_torch(tensors(p)).detach().numpy())
    vd = diode_grid(p)
    nb = np.array([diode_nb(float(v), vec) for v in vd])
    # the torch path as the formulations use it: the named raw entries of the vector
    pm = {k: torch.tensor(vec[i]) for i, k in enumerate(DIODE_PARAM_ORDER)}
    ref = torch.stack(diode_junction(torch.tensor(vd, dtype=F64), pm), dim=1).numpy()
    for j, what in enumerate(("i", "di/dvd", "q", "dq/dvd")):
        assert_close(nb[:, j], ref[:, j], 1e-12, 1e-30, f"{name} {what}")


@pytest.mark.parametrize("name", list(BJT_CARDS))
def test_bjt_numba_matches_torch(name: str) -> None:
    kind, card = BJT_CARDS[name]
    pol = 1.0 if kind == "NPN" else -1.0
    p = card_params(card, BJT_ALIASES)
    vec = bjt_params_vector(p, pol)
    assert vec.shape == (len(BJT_LAYOUT),) and vec[0] == pol
    np.testing.assert_array_equal(vec, bjt_params_torch(tensors(p), pol).detach().numpy())
    vbe, vbc = bjt_grid()
    vbe, vbc = pol * vbe, pol * vbc
    out = np.zeros(12)
    nb = np.empty((vbe.size, 12))
    for k in range(vbe.size):
        bjt_nb(float(vbe[k]), float(vbc[k]), vec, out)
        nb[k] = out
    pm = {k: torch.tensor(vec[i]) for i, k in enumerate(BJT_PARAM_ORDER)}
    r = bjt_junctions(torch.tensor(vbe, dtype=F64), torch.tensor(vbc, dtype=F64), pm, pol)
    for j, what in enumerate(r._fields):
        assert_close(nb[:, j], r[j].numpy(), 1e-12, 1e-30, f"{name} {what}")


# ----------------------------------------------------------------------------- Jacobians


@pytest.mark.parametrize("name", list(DIODE_CARDS))
def test_diode_jacobian_matches_autograd(name: str) -> None:
    p = tensors(card_params(DIODE_CARDS[name], DIODE_ALIASES))
    vd = torch.tensor(diode_grid({k: float(v) for k, v in p.items()}), dtype=F64, requires_grad=True)
    i, g, q, c = diode_junction(vd, p)
    di, = torch.autograd.grad(i.sum(), vd, retain_graph=True)
    dq, = torch.autograd.grad(q.sum(), vd)
    assert_close(g.detach(), di, 1e-10, 1e-30, f"{name} di/dvd")
    assert_close(c.detach(), dq, 1e-10, 1e-30, f"{name} dq/dvd")


@pytest.mark.parametrize("name", list(BJT_CARDS))
def test_bjt_jacobian_matches_autograd(name: str) -> None:
    kind, card = BJT_CARDS[name]
    pol = 1.0 if kind == "NPN" else -1.0
    p = tensors(card_params(card, BJT_ALIASES))
    a, b = bjt_grid()
    vbe = torch.tensor(pol * a, dtype=F64, requires_grad=True)
    vbc = torch.tensor(pol * b, dtype=F64, requires_grad=True)
    r = bjt_junctions(vbe, vbc, p, pol)
    for out in ("ib", "ic", "qbe", "qbc"):
        ge, gc = torch.autograd.grad(getattr(r, out).sum(), (vbe, vbc), retain_graph=True, allow_unused=True,
                                     materialize_grads=True)
        assert_close(getattr(r, f"d{out}_dvbe").detach(), ge, 1e-10, 1e-30, f"{name} d{out}/dvbe")
        assert_close(getattr(r, f"d{out}_dvbc").detach(), gc, 1e-10, 1e-30, f"{name} d{out}/dvbc")


def test_diode_parameter_gradients() -> None:
    base = card_params(DIODE_CARDS["1N4148"] + " IKF=5m BV=30 IBV=1u", DIODE_ALIASES)
    names = ["IS", "N", "CJO", "IKF", "TT", "M", "VJ", "BV"]
    vd = torch.tensor([-30.5, -2.0, -0.02, 0.3, 0.55, 0.7, 0.85], dtype=F64)

    def f(x: torch.Tensor) -> torch.Tensor:
        p = tensors(DIODE_DEFAULTS | base)
        for k, n in enumerate(names):
            p[n] = p[n] * x[k]
        return torch.cat(diode_junction(vd, p))

    with torch.no_grad():
        scale = torch.abs(f(torch.ones(len(names), dtype=F64))) + 1e-300
    x = torch.ones(len(names), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: f(x) / scale, (x,), eps=1e-7, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["NPN", "PNP"])
def test_bjt_parameter_gradients(kind: str) -> None:
    base = card_params(BJT_CARDS["gp_full"][1], BJT_ALIASES)
    names = "IS NF BF BR VAF VAR IKF IKR ISE ISC CJE CJC TF XTF VTF ITF TR NKF MJE".split()
    pol = 1.0 if kind == "NPN" else -1.0
    vbe = pol * torch.tensor([0.55, 0.7, 0.75, 0.8, -0.3], dtype=F64)
    vbc = pol * torch.tensor([-3.0, -0.5, 0.5, 0.7, -1.0], dtype=F64)

    def f(x: torch.Tensor) -> torch.Tensor:
        p = tensors(BJT_DEFAULTS | base)
        for k, n in enumerate(names):
            p[n] = p[n] * x[k]
        return torch.cat(list(bjt_junctions(vbe, vbc, p, pol)))

    with torch.no_grad():
        scale = torch.abs(f(torch.ones(len(names), dtype=F64))) + 1e-300
    x = torch.ones(len(names), dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: f(x) / scale, (x,), eps=1e-7, atol=1e-6, rtol=1e-5)


def test_gradients_flow_through_parameter_vectors() -> None:
    """The derived slots of the vectors are differentiable functions of the raw parameters."""
    isat = torch.tensor(2.52e-9, dtype=F64, requires_grad=True)
    vec = diode_params_torch({"IS": isat, "N": 1.752, "CJO": 4e-12, "BV": 30.0, "IBV": 1e-4})
    vec[DIODE_LAYOUT.index("VCRIT")].backward()
    vte = 1.752 * VT
    assert abs(float(isat.grad) - (-vte / 2.52e-9)) < 1e-9 * vte / 2.52e-9
    bf = torch.tensor(300.0, dtype=F64, requires_grad=True)
    vb = bjt_params_torch({"BF": bf, "VAF": 50.0}, -1.0)
    assert bool(torch.isfinite(vb[len(BJT_PARAM_ORDER):]).all())  # raw slots may hold inf defaults
    (vb[BJT_LAYOUT.index("BF")] * 2 + vb[BJT_LAYOUT.index("IVAF")]).backward()
    assert float(bf.grad) == 2.0


def test_unused_branches_leak_no_nan() -> None:
    """torch.where's unused branches (reverse formula at 0 V, knees off, inf parameters, the
    breakdown exponent far from breakdown) keep values and gradients finite; so does the linear
    continuation of exp() beyond EXP_LIMIT (20 V forward on an N = 1 junction)."""
    cases = [(DIODE_CARDS["zener_knee"], [-5.3, -5.2, -5.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 1.5]),
             (DIODE_CARDS["recomb"] + " BV=50", [-60.0, -50.5, -3.0, 0.0, 0.39, 0.41, 0.8, 20.0]),
             ("IS=1e-14", [-1e3, -1.0, 0.0, 20.0])]
    for card, volts in cases:
        p = tensors(card_params(card, DIODE_ALIASES))
        for v in p.values():
            v.requires_grad_(True)
        vd = torch.tensor(volts, dtype=F64, requires_grad=True)
        out = torch.stack(diode_junction(vd, p))
        assert bool(torch.isfinite(out).all()), card
        grads = torch.autograd.grad(out.sum(), [vd, *p.values()])
        assert all(bool(torch.isfinite(g).all()) for g in grads), card
    q = tensors({"BF": 100.0, "VAF": float("inf"), "IKF": 0.0, "ITF": 0.0, "VTF": float("inf"), "TF": 1e-9,
                 "TR": 1e-8, "CJE": 1e-12, "CJC": 1e-12})
    for v in q.values():
        v.requires_grad_(True)
    vbe = torch.tensor([-50.0, 0.0, 0.7, 20.0], dtype=F64, requires_grad=True)
    vbc = torch.tensor([-50.0, 0.0, -5.0, 0.5], dtype=F64, requires_grad=True)
    r = bjt_junctions(vbe, vbc, q, 1.0)
    assert all(bool(torch.isfinite(x).all()) for x in r)
    grads = torch.autograd.grad(sum(x.sum() for x in r), [vbe, vbc, *q.values()])
    assert all(bool(torch.isfinite(g).all()) for g in grads)


def test_pnp_is_mirrored_npn() -> None:
    p = tensors(card_params(BJT_CARDS["gp_full"][1], BJT_ALIASES))
    a, b = (torch.tensor(x, dtype=F64) for x in bjt_grid())
    n = bjt_junctions(a, b, p, 1.0)
    m = bjt_junctions(-a, -b, p, -1.0)
    for j in range(4):
        assert torch.equal(m[j], -n[j])
    for j in range(4, 12):
        assert torch.equal(m[j], n[j])


# ----------------------------------------------------------------------------- libmvec exponentials
# The generated numba forward batches a device's port exponentials into 4-lane libmvec calls
# (circuitsim/devices/vecmath.py); the scalar libm code it replaces is the reference.

needs_libmvec = pytest.mark.skipif(not vecmath.AVAILABLE, reason="libmvec (glibc, x86-64 with AVX2) not found")


@needs_libmvec
def test_vexp4_within_4_ulp_of_exp() -> None:
    import math

    from numba import njit

    @njit
    def lanes(x: np.ndarray, out: np.ndarray) -> None:
        for i in range(0, x.size, 4):
            out[i], out[i + 1], out[i + 2], out[i + 3] = vecmath.vexp4(x[i], x[i + 1], x[i + 2], x[i + 3])

    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-745.0, 709.0, 20000), rng.uniform(-40.0, 40.0, 20000),
                        [0.0, 1.0, -1.0, 700.0, -708.0, 1e-300, -1e-300, 709.7]])
    x = np.concatenate([x, np.zeros(-x.size % 4)])
    out = np.empty_like(x)
    lanes(x, out)
    ref = np.array([math.exp(v) for v in x])
    normal = ref > 2.3e-308  # in the subnormal range, 4 ulp is an absolute 4 * 2**-1074
    ulps = np.abs(out - ref) / np.spacing(ref)
    assert ulps[normal].max() <= 4.0
    assert np.abs(out[~normal] - ref[~normal]).max() <= 4 * 2.0**-1074
    special, res = np.array([np.nan, -np.inf, np.inf, 710.0]), np.empty(4)
    lanes(special, res)
    assert np.isnan(res[0]) and res[1] == 0.0 and res[2] == np.inf and res[3] == np.inf


def _forward(prog: Program, vector: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Callable[..., tuple], str]:
    # the program's numba forward generated with (vector) and without libmvec, compiled on its own
    from circuitsim.devices.program import NB_HELPERS
    from circuitsim.kernels.nonlinearity import load_generated

    with monkeypatch.context() as mp:
        mp.setattr(vecmath, "AVAILABLE", vector)
        src = prog.numba_eval_source("dev_fwd", "@njit(cache=True)")
    mod = load_generated("import math\nfrom numba import njit\n" + NB_HELPERS + "\n" + src)
    return mod.dev_fwd, src


@needs_libmvec
@pytest.mark.parametrize("name", list(BJT_CARDS))
def test_bjt_vector_exponentials_match_scalar_libm(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the full program (five port exponentials: four in one call, the fifth scalar) and each card's
    # variant, on the grid of test_bjt_numba_matches_torch; NaN port voltages stay NaN (Newton's test)
    from circuitsim.devices.bjt import FAMILY, bjt_program

    kind, card = BJT_CARDS[name]
    pol = 1.0 if kind == "NPN" else -1.0
    p = card_params(card, BJT_ALIASES)
    vec = bjt_params_vector(p, pol)
    vbe, vbc = bjt_grid()
    for feats in (FAMILY.all_features, FAMILY.features(p)):
        prog = bjt_program(feats)
        fv, src = _forward(prog, True, monkeypatch)
        fs, scalar = _forward(prog, False, monkeypatch)
        assert "_vexp4(" not in scalar
        if feats == FAMILY.all_features:
            assert src.count("_vexp4(") == 1 and src.count("_limexp(") == 1  # four in the call, one scalar
        elif "_vexp4(" not in src:
            continue  # fewer than three port exponentials: scalar calls either way
        a = np.array([fv(float(x), float(y), vec) for x, y in zip(vbe, vbc)])
        b = np.array([fs(float(x), float(y), vec) for x, y in zip(vbe, vbc)])
        scale = np.abs(b).max(axis=0, keepdims=True)
        assert_close(a, b, 1e-13, 1e-13 * scale, f"{name} {sorted(feats)}")
        assert np.isnan(fv(np.nan, 0.3, vec)[:2]).all() and np.isnan(fv(0.6, np.nan, vec)[:2]).all()


# ----------------------------------------------------------------------------- parameter VJPs
# The compiled kernels' hand-written parameter derivatives against torch autograd through the
# torch equations evaluated on the slots of the vector (derived slots as independent inputs), point
# by point: diode_junction with diode_model replaced by a read of the slots, and the NPN core of
# bjt_junctions on the slots.

_DIODE_SLOT_KEYS = {**{k: DIODE_LAYOUT.index(k) for k in ("CJO", "TT", "ISR", "GMIN")},
                    **{k: len(DIODE_PARAM_ORDER) + i for i, k in enumerate(
                        ("IS", "VTE", "VJ", "M", "DEPCAP", "F1", "F2", "F3", "IKF", "IKR", "BV", "VTEBRK",
                         "VTR", "VCRIT"))}}
_BJT_SLOT_KEYS = {**{k: BJT_LAYOUT.index(k) for k in ("BF", "BR", "ITF", "XTF", "TF", "TR", "CJE", "VJE", "VJC",
                                                      "GMIN")},
                  **{k: len(BJT_PARAM_ORDER) + i for i, k in enumerate(
                      ("ISBE", "ISBC", "ISE", "ISC", "VTF", "VTR", "VTE", "VTC", "IVAF", "IVAR", "IIKF", "IIKR",
                       "NKF", "OVTF", "FCPE", "F1", "F2", "F3", "FCPC", "F5", "F6", "F7", "CZBC", "MJE", "MJC",
                       "VCRIT", "IVTF", "IVTR", "IVTE", "IVTC", "IBF", "IBR", "IVJE", "IVJC", "IF2", "IF6"))}}


def _check_slot_gradients(nb: np.ndarray, ref: np.ndarray, what: str) -> None:
    # per point and slot, relative to the largest term of that slot over the points (a slot's
    # gradient is a short sum of products; its value can pass through zero)
    assert np.isfinite(ref).all() and np.isfinite(nb).all(), what
    scale = np.abs(ref).max(axis=0, keepdims=True)
    bad = np.abs(nb - ref) > 1e-10 * np.abs(ref) + 1e-12 * scale
    if bad.any():
        k, j = np.argwhere(bad)[0]
        raise AssertionError(f"{what}: {int(bad.sum())} entries differ, first point {k} slot {j}: "
                             f"{nb[k, j]!r} vs {ref[k, j]!r}")
    assert np.count_nonzero(ref) > 0, what


@pytest.mark.parametrize("name", list(DIODE_CARDS) + ["1N914_q0"])
def test_diode_parameter_vjp_matches_autograd(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """diode_vjp_nb == autograd of diode_junction w.r.t. every slot, current and charge adjoints."""
    p = card_params(DIODE_CARDS[name.removesuffix("_q0")], DIODE_ALIASES)
    vec = diode_params_vector(p)
    vd = diode_grid(p)
    vd = vd[vd >= -p.get("BV", np.inf) - 1.0]  # deep breakdown overflows float64 (torch and numba alike)
    n = vd.size
    rng = np.random.default_rng(11)
    a_i = rng.standard_normal(n)
    # "_q0": the charge output unused (a_q = 0), as a DiodeBlock without out_q
    a_q = np.zeros(n) if name.endswith("_q0") else 1e9 * rng.standard_normal(n)
    nb = np.zeros((n, vec.size))
    for k in range(n):
        diode_vjp_nb(float(vd[k]), vec, float(a_i[k]), float(a_q[k]), nb[k])
    th = torch.tensor(vec, dtype=F64).expand(n, vec.size).clone().requires_grad_(True)
    monkeypatch.setattr(diode_module, "diode_model", lambda _p: {k: th[:, j] for k, j in _DIODE_SLOT_KEYS.items()})
    i, _, q, _ = diode_junction(torch.tensor(vd, dtype=F64), {})
    (ref,) = torch.autograd.grad((torch.tensor(a_i) * i + torch.tensor(a_q) * q).sum(), th)
    _check_slot_gradients(nb, ref.numpy(), name)
    # the slots the kernel does not read get nothing
    unread = [j for j, k in enumerate(DIODE_LAYOUT) if j not in _DIODE_SLOT_KEYS.values() or k == "VCRIT"]
    assert not nb[:, unread].any()


@pytest.mark.parametrize("name", list(BJT_CARDS) + ["2N3904_as_PNP"])
def test_bjt_parameter_vjp_matches_autograd(name: str) -> None:
    """bjt_vjp_nb == autograd of the Gummel-Poon equations w.r.t. every slot, all four outputs."""
    kind, card = BJT_CARDS[name.removesuffix("_as_PNP")]
    pol = -1.0 if name.endswith("_as_PNP") or kind == "PNP" else 1.0
    p = without_resistances(card) if name == "gp_full" else card  # RB = 0 puts all of CJC on b'-c'
    vec = bjt_params_vector(card_params(p, BJT_ALIASES), pol)
    a, b = bjt_grid()
    vbe, vbc = pol * a, pol * b
    n = vbe.size
    rng = np.random.default_rng(12)
    adj = rng.standard_normal((n, 4)) * np.array([1.0, 1.0, 1e9, 1e9])
    nb = np.zeros((n, vec.size))
    for k in range(n):
        bjt_vjp_nb(float(vbe[k]), float(vbc[k]), vec, *map(float, adj[k]), nb[k])
    th = torch.tensor(vec, dtype=F64).expand(n, vec.size).clone().requires_grad_(True)
    r = bjt_npn_torch(torch.tensor(pol * vbe), torch.tensor(pol * vbc),
                      {k: th[:, j] for k, j in _BJT_SLOT_KEYS.items()})
    out = pol * (torch.tensor(adj[:, 0]) * r.ib + torch.tensor(adj[:, 1]) * r.ic
                 + torch.tensor(adj[:, 2]) * r.qbe + torch.tensor(adj[:, 3]) * r.qbc)
    (ref,) = torch.autograd.grad(out.sum(), th)
    _check_slot_gradients(nb, ref.numpy(), name)
    assert not nb[:, BJT_LAYOUT.index("POLARITY")].any()


# ----------------------------------------------------------------------------- ngspice


def ngspice_vectors(body: str, vectors: Sequence[str], options: str = "") -> np.ndarray:
    """Run ``ngspice -b`` on a netlist body with an analysis line; return the saved vectors as columns."""
    with tempfile.TemporaryDirectory() as td:
        out = Path(td) / "out.txt"
        text = "\n".join([
            "* circuitsim device test", options, body, ".control", "set numdgt=17", "option bypass=0",
            "save " + " ".join(vectors), "run", f"wrdata {out} " + " ".join(vectors), ".endc", ".end", "",
        ])
        (Path(td) / "t.cir").write_text(text)
        res = subprocess.run([NGSPICE, "-b", "t.cir"], cwd=td, capture_output=True, text=True, timeout=120)
        if not out.exists():
            raise AssertionError(f"ngspice produced no output:\n{res.stdout}\n{res.stderr}")
        data = np.loadtxt(out, ndmin=2)
    return data[:, 1::2]  # wrdata writes (scale, value) pairs


@needs_ngspice
@pytest.mark.parametrize("name", list(DIODE_CARDS))
def test_diode_matches_ngspice(name: str) -> None:
    card = without_resistances(DIODE_CARDS[name])
    p = card_params(card, DIODE_ALIASES)
    lo = -(p["BV"] + 1.5) if "BV" in p else -10.0
    step = 0.01
    data = ngspice_vectors(f"V1 a 0 0\nD1 a 0 dm\n.model dm D({card})\n.dc V1 {lo} 1.2 {step}",
                           ["@d1[vd]", "@d1[id]", "@d1[gd]", "@d1[charge]", "@d1[cd]"])
    vd = data[:, 0]
    assert_close(vd, lo + step * np.arange(len(vd)), 0.0, 1e-9, "device voltage vs sweep")
    i, g, q, c = (x.numpy() for x in diode_junction(torch.tensor(vd, dtype=F64), tensors(p)))
    assert_close(i, data[:, 1], 1e-9, 1e-15, f"{name} current")
    assert_close(q, data[:, 3], 1e-9, 1e-26, f"{name} charge")
    if "ISR" not in p:  # ngspice's ISR conductance is not the derivative of its current (docs/devices.md)
        assert_close(g, data[:, 2], 1e-9, 1e-18, f"{name} conductance")
        assert_close(c, data[:, 4], 1e-9, 1e-26, f"{name} capacitance")


@needs_ngspice
@pytest.mark.parametrize("reltol", [1e-3, 1e-6])
def test_diode_breakdown_fit_follows_reltol(reltol: float) -> None:
    card = "IS=4.352n N=1.906 BV=110 IBV=0.0001"
    p = tensors(card_params(card, DIODE_ALIASES)) | {"RELTOL": torch.tensor(reltol, dtype=F64)}
    data = ngspice_vectors(f"V1 a 0 0\nD1 a 0 dm\n.model dm D({card})\n.dc V1 -111 -108 0.01",
                           ["@d1[vd]", "@d1[id]", "@d1[gd]"], options=f".options reltol={reltol}")
    i, g, _, _ = diode_junction(torch.tensor(data[:, 0], dtype=F64), p)
    assert_close(i.numpy(), data[:, 1], 1e-9, 1e-15, "breakdown current")
    assert_close(g.numpy(), data[:, 2], 1e-9, 1e-18, "breakdown conductance")
    assert float(diode_model(p)["BV"]) < 110.0  # the fit moved BV


@needs_ngspice
@pytest.mark.parametrize("name", list(BJT_CARDS))
def test_bjt_matches_ngspice(name: str) -> None:
    kind, card = BJT_CARDS[name]
    card = without_resistances(card)
    s = 1 if kind == "NPN" else -1
    # the substrate node goes where ngspice's GMIN substrate conductance is shorted out
    # (collector' of a vertical NPN, base' of a lateral PNP)
    sub = "c" if kind == "NPN" else "b"
    body = (f"VB b 0 0\nVC c 0 0\nQ1 c b 0 {sub} qm\n.model qm {kind}({card})\n"
            f".dc VB {-6 * s} {0.95 * s} {0.01 * s} VC {0.1 * s} {8.1 * s} {2 * s}")
    vecs = ["@q1[vbe]", "@q1[vbc]", "@q1[ib]", "@q1[ic]", "@q1[qbe]", "@q1[qbc]", "@q1[qbx]", "@q1[gpi]",
            "@q1[gmu]", "@q1[gm]", "@q1[go]", "@q1[cpi]", "@q1[cmu]", "@q1[cbx]"]
    d = dict(zip(vecs, ngspice_vectors(body, vecs).T))
    # ngspice's states are in the NPN frame (vbe = type*(V(b')-V(e')), likewise charges)
    vbe, vbc = s * d["@q1[vbe]"], s * d["@q1[vbc]"]
    assert vbe.size == 696 * 5  # the whole nested sweep came back
    p = tensors(card_params(card, BJT_ALIASES))
    r = bjt_junctions(torch.tensor(vbe, dtype=F64), torch.tensor(vbc, dtype=F64), p, float(s))
    r = type(r)(*(x.numpy() for x in r))
    assert_close(r.ib, d["@q1[ib]"], 1e-9, 1e-15, f"{name} ib")
    assert_close(r.ic, d["@q1[ic]"], 1e-9, 1e-15, f"{name} ic")
    assert_close(s * r.qbe, d["@q1[qbe]"], 1e-9, 1e-26, f"{name} qbe")
    assert_close(s * r.qbc, d["@q1[qbc]"] + d["@q1[qbx]"], 1e-9, 1e-26, f"{name} qbc (+qbx, RB = 0)")
    assert_close(r.dib_dvbe, d["@q1[gpi]"], 1e-9, 1e-18, f"{name} gpi")
    assert_close(r.dib_dvbc, d["@q1[gmu]"], 1e-9, 1e-18, f"{name} gmu")
    big = np.abs(d["@q1[gm]"]) + np.abs(d["@q1[go]"])  # gm + go cancels in reverse operation
    assert_close(r.dic_dvbe, d["@q1[gm]"] + d["@q1[go]"], 0.0, 1e-9 * big + 1e-18, f"{name} gm+go")
    assert_close(-r.dic_dvbc, d["@q1[gmu]"] + d["@q1[go]"], 1e-9, 1e-18, f"{name} gmu+go")
    assert_close(r.dqbe_dvbe, d["@q1[cpi]"], 1e-9, 1e-26, f"{name} cpi")
    assert_close(r.dqbc_dvbc, d["@q1[cmu]"] + d["@q1[cbx]"], 1e-9, 1e-26, f"{name} cmu (+cbx)")


@needs_ngspice
def test_bjt_xcjc_split_with_base_resistance() -> None:
    """With RB > 0, qbc holds XCJC*CJC on b'-c' and bjt_qbx the rest on b-c' (bjtload.c qbx)."""
    card = "IS=1e-15 BF=150 CJC=5p VJC=0.6 MJC=0.45 XCJC=0.6 TR=10n RB=100 FC=0.6"
    body = "VB b 0 0\nVC c 0 0\nQ1 c b 0 c qm\n.model qm NPN(" + card + ")\n.dc VB -3 0.8 0.05 VC 0.3 4.3 2"
    vecs = ["@q1[vbe]", "@q1[vbc]", "@q1[qbc]", "@q1[qbx]", "v(b)", "v(c)"]
    d = dict(zip(vecs, ngspice_vectors(body, vecs).T))
    p = tensors(card_params(card, BJT_ALIASES))
    r = bjt_junctions(torch.tensor(d["@q1[vbe]"]), torch.tensor(d["@q1[vbc]"]), p, 1.0)
    assert_close(r.qbc.numpy(), d["@q1[qbc]"], 1e-9, 1e-26, "qbc")
    qbx, _ = bjt_qbx(torch.tensor(d["v(b)"] - d["v(c)"]), p)
    assert_close(qbx.numpy(), d["@q1[qbx]"], 1e-9, 1e-26, "qbx")
    assert np.max(np.abs(d["@q1[qbx]"])) > 1e-13  # the remainder is really there


@needs_ngspice
@pytest.mark.parametrize("kind", ["NPN", "PNP"])
def test_bjt_instance_scaling_matches_ngspice(kind: str) -> None:
    card = ("IS=1e-15 BF=200 VAF=50 VAR=20 IKF=10m IKR=5m ISE=1e-13 NE=1.8 BR=3 ISC=1e-12 NC=1.7 CJE=10p "
            "CJC=5p TF=0.5n XTF=3 VTF=2 ITF=0.05 TR=10n")
    s = 1 if kind == "NPN" else -1
    sub = "c" if kind == "NPN" else "b"
    body = (f"VB b 0 0\nVC c 0 0\nQ1 c b 0 {sub} qm area=2 areab=3 areac=5 m=1.5\n.model qm {kind}({card})\n"
            f".dc VB {-1.5 * s} {0.95 * s} {0.01 * s} VC {0.1 * s} {5.1 * s} {1 * s}")
    vecs = ["@q1[vbe]", "@q1[vbc]", "@q1[ib]", "@q1[ic]", "@q1[qbe]", "@q1[qbc]"]
    d = dict(zip(vecs, ngspice_vectors(body, vecs).T))
    p = bjt_instance_params(tensors(card_params(card, BJT_ALIASES)), 2.0, 1.5, 3.0, 5.0, float(s))
    r = bjt_junctions(s * torch.tensor(d["@q1[vbe]"]), s * torch.tensor(d["@q1[vbc]"]), p, float(s))
    assert_close(r.ib.numpy(), d["@q1[ib]"], 1e-9, 1e-15, "ib")
    assert_close(r.ic.numpy(), d["@q1[ic]"], 1e-9, 1e-15, "ic")
    assert_close(s * r.qbe.numpy(), d["@q1[qbe]"], 1e-9, 1e-26, "qbe")
    assert_close(s * r.qbc.numpy(), d["@q1[qbc]"], 1e-9, 1e-26, "qbc")


@needs_ngspice
def test_diode_instance_scaling_matches_ngspice() -> None:
    card = "Is=2.52n N=1.752 Cjo=4p M=.4 tt=20n IKF=1m IKR=1u BV=10 IBV=1u ISR=1n"
    data = ngspice_vectors(f"V1 a 0 0\nD1 a 0 dm area=2.5 m=3\n.model dm D({card})\n.dc V1 -12 1.0 0.01",
                           ["@d1[vd]", "@d1[id]", "@d1[charge]"])
    p = diode_instance_params(tensors(card_params(card, DIODE_ALIASES)), 2.5, 3.0)
    i, _, q, _ = diode_junction(torch.tensor(data[:, 0]), p)
    assert_close(i.numpy(), data[:, 1], 1e-9, 1e-15, "current")
    assert_close(q.numpy(), data[:, 2], 1e-9, 1e-26, "charge")


def _showmod(model_lines: str, instances: str) -> dict[str, dict[str, str]]:
    """ngspice's ``showmod <inst> : all`` listing: {model name: {param: printed value}}."""
    with tempfile.TemporaryDirectory() as td:
        net = f"* tables\nV1 a 0 0.1\n{instances}\n{model_lines}\n.control\nop\n"
        for inst in re.findall(r"^(\w+)", instances, flags=re.MULTILINE):
            net += f"showmod {inst} : all\n"
        net += ".endc\n.end\n"
        (Path(td) / "t.cir").write_text(net)
        res = subprocess.run([NGSPICE, "-b", "t.cir"], cwd=td, capture_output=True, text=True, timeout=60)
    tables: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "model":
            current = tables.setdefault(parts[1], {})
        elif len(parts) == 2 and current is not None:
            current[parts[0]] = parts[1]
    return tables


@needs_ngspice
def test_parameter_tables_cover_ngspice() -> None:
    """Every parameter ngspice 39 lists is modelled, silent or unmodelled; ngspice's defaults are ours."""
    tables = _showmod(".model dm D()\n.model qn NPN()\n.model qp PNP()",
                      "D1 a 0 dm\nQ1 a a 0 qn\nQ2 0 a a qp")
    # output-only entries (names truncated by showmod)
    outputs = ("model", "type", "cond", "invearlyvol", "invrolloff", "collectorco", "emittercond",
               "transtimevb", "excessphase")
    for model, (defaults, silent, unmodelled) in {
        "dm": (DIODE_DEFAULTS, DIODE_SILENT, DIODE_UNMODELLED),
        "qn": (BJT_DEFAULTS, BJT_SILENT, BJT_UNMODELLED),
        "qp": (BJT_DEFAULTS, BJT_SILENT, BJT_UNMODELLED),
    }.items():
        listed = tables[model]
        assert len(listed) > 40
        assert not (set(defaults) & set(silent)) and not (set(defaults) & set(unmodelled))
        assert not (set(silent) & set(unmodelled))
        names = {n.upper() for n in listed if not n.startswith(outputs)}
        missing = names - set(defaults) - set(silent) - set(unmodelled)
        assert not missing, f"{model}: unclassified ngspice parameters {sorted(missing)}"
        assert set(defaults) <= names, f"{model}: parameters ngspice does not know {set(defaults) - names}"
        # "not given" sentinels differ by design (docs/devices.md); the rest must be ngspice's defaults
        special = {"BV", "IKF", "IKR", "NBV", "ISR", "VAF", "VAR", "VTF"}
        for k, v in defaults.items():
            if k not in special:
                assert float(listed[k.lower()]) == pytest.approx(v, rel=1e-12), (model, k)


@needs_ngspice
def test_aliases_are_ngspice_aliases() -> None:
    lines, inst = [], []
    for n, alias in enumerate(list(DIODE_ALIASES) + list(BJT_ALIASES)):
        kind = "D" if n < len(DIODE_ALIASES) else "NPN"
        value = (1.23 + 0.01 * n) * 1e-5  # below 1e-4, where ngspice reads C2/C4 as currents
        lines.append(f".model m{n} {kind}({alias}={value})")
        inst.append(f"D{n} a 0 m{n}" if kind == "D" else f"Q{n} a a 0 m{n}")
    tables = _showmod("\n".join(lines), "\n".join(inst))
    for n, (alias, canon) in enumerate(list(DIODE_ALIASES.items()) + list(BJT_ALIASES.items())):
        value = float(tables[f"m{n}"][canon.lower()])
        assert value == pytest.approx((1.23 + 0.01 * n) * 1e-5, rel=1e-6), alias
