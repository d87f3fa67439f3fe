"""Device equations written once: the code generated from a device program, checked independently.

* the generated numba forward's Jacobian against torch autograd of the generated torch ``f``;
* the generated numba parameter VJP against torch autograd w.r.t. the parameter slots;
* every feature variant (optional terms left out where a card does not give them) against the
  full program: the omitted terms are exactly zero, so the values agree to rounding;
* the registry drives the system layer: a family defined outside the package (a toy tanh
  conductance) works end to end by registration alone (MNA-free: nonlinearity level).

(``tests/test_devices.py`` checks the full programs against the ngspice binary.)
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import sympy
import torch
from test_devices import BJT_CARDS, DIODE_CARDS, assert_close, bjt_grid, card_params, ngspice_vectors, tensors

from circuitsim.devices import registry
from circuitsim.devices.bjt import BJT_ALIASES, bjt_model, bjt_params_torch
from circuitsim.devices.diode import DIODE_ALIASES, diode_model, diode_params_torch
from circuitsim.devices.family import DeviceFamily, Limit, Output
from circuitsim.devices.program import NB_HELPERS, Program, torch_call
from circuitsim.kernels.nonlinearity import DeviceBlock, build_nonlinearity, load_generated

F64 = torch.float64
needs_ngspice = pytest.mark.requires_ngspice


def compiled(fam: DeviceFamily, features: frozenset[str] | None, outputs: list[str] | None = None):
    """(program, generated, numba eval, numba vjp) of one variant, compiled on its own."""
    prog, gen, fname = fam.code(features, outputs)
    src = "import math\nfrom numba import njit\n" + NB_HELPERS + "\n" + gen.numba
    mod = load_generated(src)
    return prog, gen, getattr(mod, fname), getattr(mod, fname + "_vjp")


def slots_of(fam: DeviceFamily, vec: np.ndarray, prog: Program) -> list[torch.Tensor]:
    return [torch.tensor(vec[slot], dtype=F64) for _, slot, _ in prog.params]


def rel_close(a: np.ndarray, b: np.ndarray, rtol: float, what: str) -> None:
    # per column (an output or a slot), relative to the column's scale: entries pass through zero
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.isfinite(a).all() and np.isfinite(b).all(), what
    scale = np.abs(b).max(axis=0, keepdims=True) + 1e-300
    bad = np.abs(a - b) > rtol * np.abs(b) + 1e-12 * scale
    assert not bad.any(), f"{what}: {int(bad.sum())} differ, first {np.argwhere(bad)[0]}"


CASES = [("diode", name) for name in DIODE_CARDS] + [("bjt", name) for name in BJT_CARDS]


def _case(kind: str, name: str):
    if kind == "diode":
        fam = registry.family("diode")
        p = card_params(DIODE_CARDS[name], DIODE_ALIASES)
        vec = diode_params_torch(tensors(p)).numpy()
        lo = -p.get("BV", 5.0) - 0.5
        volts = np.linspace(lo, 1.2, 97)[:, None]
        return fam, p, vec, volts
    kind_, card = BJT_CARDS[name]
    fam = registry.family("bjt")
    p = card_params(card, BJT_ALIASES)
    vec = bjt_params_torch(tensors(p), 1.0 if kind_ == "NPN" else -1.0).numpy()
    a, b = bjt_grid()
    pick = np.random.default_rng(3).choice(a.size, 150, replace=False)
    return fam, p, vec, np.stack([a[pick], b[pick]], axis=1)  # the program frame (NPN)


@pytest.mark.parametrize("kind,name", CASES)
def test_generated_jacobian_and_vjp_match_torch_autograd(kind: str, name: str) -> None:
    """Card-specific variant: numba J vs autograd of torch f (w.r.t. v), numba VJP vs autograd (w.r.t. slots)."""
    fam, p, vec, volts = _case(kind, name)
    feats = fam.features(p)
    used = [o for o in fam.outputs if not o.charge or set(p) & fam.charge_params]  # as the system layer does
    prog, gen, fn, vjp = compiled(fam, feats, [o.name for o in used])
    nout, nport = len(prog.outputs), len(prog.ports)
    rng = np.random.default_rng(5)
    mu = rng.standard_normal((len(volts), nout)) * np.array([1e9 if o.charge else 1.0 for o in used])
    nb_f, nb_j, nb_g = [], [], []
    for v, m in zip(volts, mu):
        r = fn(*map(float, v), vec)
        nb_f.append(r[:nout])
        nb_j.append(np.reshape(r[nout:], (nout, nport)))
        g = np.zeros(vec.size)
        vjp(*map(float, v), vec, *map(float, m), g)
        nb_g.append(g)
    vt = [torch.tensor(volts[:, j], dtype=F64, requires_grad=True) for j in range(nport)]
    th = torch.tensor(vec, dtype=F64).expand(len(volts), vec.size).clone().requires_grad_(True)
    params = [th[:, slot] for _, slot, _ in prog.params]
    f, _ = torch_call(gen, prog, vt, params, False)
    rel_close(np.array(nb_f), torch.stack(f, 1).detach().numpy(), 1e-13, f"{name} f")
    for k in range(nout):
        grads = torch.autograd.grad(f[k].sum(), vt, retain_graph=True, allow_unused=True, materialize_grads=True)
        rel_close(np.array(nb_j)[:, k, :], torch.stack(grads, 1).numpy(), 1e-10, f"{name} d{prog.outputs[k][0]}/dv")
    (ref,) = torch.autograd.grad(sum((torch.tensor(mu[:, k]) * f[k]).sum() for k in range(nout)), th)
    ref = ref.numpy()
    rel_close(np.array(nb_g), ref, 1e-10, f"{name} vjp")
    read = sorted({slot for _, slot, g in prog.params if g})
    assert not np.array(nb_g)[:, [j for j in range(vec.size) if j not in read]].any()  # nothing else written
    assert np.count_nonzero(ref) > 0


@pytest.mark.parametrize("kind,name", CASES)
def test_feature_variants_agree_with_full_program(kind: str, name: str) -> None:
    """Leaving out the terms a card does not give changes nothing (they are exactly zero there)."""
    fam, p, vec, volts = _case(kind, name)
    full, gfull, _ = fam.code(None)
    vt = [torch.tensor(volts[:, j], dtype=F64) for j in range(volts.shape[1])]
    ref_f, ref_j = fam.evaluate(vt, _named(fam, vec, full))
    for outs in ([o.name for o in fam.outputs], [o.name for o in fam.outputs if not o.charge]):
        prog, _, _ = fam.code(fam.features(p), outs)
        f, j = fam.evaluate(vt, _named(fam, vec, prog), fam.features(p))
        f, j = _restricted(fam, outs, f), _restricted(fam, outs, j)
        for k, o in enumerate(outs):
            idx = [x.name for x in fam.outputs].index(o)
            np.testing.assert_allclose(f[k].numpy(), ref_f[idx].numpy(), rtol=1e-15, atol=0, err_msg=o)
            for a, b in zip(j[k], ref_j[idx]):
                np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-14, atol=0, err_msg=o)
    # a variant really is smaller when the card leaves terms out
    if fam.features(p) != fam.all_features:
        def size(prog: Program) -> int:
            return sum(int(sympy.count_ops(e)) for _, e in prog.stmts)

        assert size(fam.code(fam.features(p))[0]) < size(full)


def _named(fam: DeviceFamily, vec: np.ndarray, prog: Program) -> dict[str, torch.Tensor]:
    return {n: torch.tensor(vec[slot], dtype=F64) for n, (_, slot, _) in zip(prog.param_names, prog.params)}


def _restricted(fam: DeviceFamily, outs: list[str], values: list) -> list:
    # FAMILY.evaluate with features returns every output of the full list; keep the requested ones
    names = [o.name for o in fam.outputs]
    return values if len(values) == len(outs) else [values[names.index(o)] for o in outs]


def test_torch_regions_keep_gradients_finite() -> None:
    """A region is evaluated only where it holds: the reverse formula at exactly 0 V leaks no nan."""
    d = diode_model(tensors({"IS": 1e-14, "CJO": 1e-12, "IKF": 1e-3, "BV": 10.0}))
    for v in d.values():
        v.requires_grad_(True)
    vd = torch.tensor([0.0, -1e-300, 1e-300, -10.5, 0.3], dtype=F64, requires_grad=True)
    (i, q), _ = registry.family("diode").evaluate([vd], d)
    grads = torch.autograd.grad((i + 1e12 * q).sum(), [vd, *d.values()], allow_unused=True, materialize_grads=True)
    assert all(bool(torch.isfinite(g).all()) for g in grads)


def test_registry_drives_catalog_and_letters() -> None:
    from circuitsim.devices.catalog import canonical_name, model_parameter_status

    assert registry.family_for_letter("D").name == "diode"
    assert registry.family_for_letter("q").name == "bjt"
    assert registry.family_for_letter("R") is None
    assert registry.family_for_model_type("PNP").name == "bjt"
    assert set(registry.model_types()) >= {"D", "NPN", "PNP"}
    assert canonical_name("D", "cj0") == "CJO" and model_parameter_status("NPN", "rbm") == "unmodelled"
    with pytest.raises(ValueError, match="clashes"):
        registry.register(_Toy(letter="D"))


class _Toy(DeviceFamily):
    """A family outside the package: i = G0 VS tanh(v / VS) plus a charge C0 v^2 / 2 (one port)."""

    name = "toy_tanh"
    model_types = ("TOYT",)
    terminals = ("a", "b")
    ports = (("a", "b"),)
    outputs = (Output("i", "a", "b"), Output("q", "a", "b", charge=True))
    defaults = {"G0": 1e-3, "VS": 0.5, "C0": 1e-9}
    layout = ("G0", "VS", "C0", "VCRIT")
    limits = (Limit(0, 0.0258, "VCRIT"),)

    def __init__(self, letter: str = "Y"):
        self.letter = letter

    def program(self, features: frozenset[str]) -> Program:
        b = Program("toy")
        v = b.port("v")
        g0, vs, c0 = (b.param(k, i) for i, k in enumerate(("G0", "VS", "C0")))
        x = b.let("x", v / vs)
        b.output("i", sympy.Piecewise((g0 * vs * sympy.tanh(x), x < 20), (g0 * vs, True)))
        b.output("q", c0 * v**2 / 2)
        return b

    def theta(self, p, model_type):
        vals = [torch.as_tensor(p[k], dtype=F64) for k in ("G0", "VS", "C0")]
        return torch.stack(vals + [torch.tensor(9.0, dtype=F64)])


def test_a_new_family_is_one_registration() -> None:
    """Registering a family is all it takes for the kernels: compiled f, J vs torch and autograd."""
    fam = _Toy()
    registry.register(fam)
    try:
        nl = build_nonlinearity([DeviceBlock("toy_tanh", (0,), (0, 1), 0), DeviceBlock("toy_tanh", (0,), (2, -1), 4,
                                                                                       sign=-1.0)], 1, 3)
        theta = torch.cat([fam.theta({"G0": 2e-3, "VS": 0.4, "C0": 3e-9}, "TOYT"),
                           fam.theta({"G0": 1e-3, "VS": 0.7, "C0": 1e-9}, "TOYT")])
        for v in itertools.chain(np.linspace(-12.0, 12.0, 9), [0.0]):
            f_n, j_n = nl.eval_numpy(np.array([v]), theta.numpy())
            f_t, j_t = nl.torch_eval(torch.tensor([v], dtype=F64), theta, jacobian=True)
            j_a = torch.autograd.functional.jacobian(lambda x: nl.torch_eval(x, theta), torch.tensor([v], dtype=F64))
            np.testing.assert_allclose(f_n, f_t.numpy(), rtol=1e-14, atol=1e-30)
            np.testing.assert_allclose(j_n, j_t.numpy(), rtol=1e-13, atol=1e-15)  # 1 - tanh^2 cancels
            np.testing.assert_allclose(j_t.numpy(), j_a.numpy(), rtol=1e-12, atol=1e-15)
            assert abs(f_n[2] - 1e-3 * 0.7 * np.tanh(-v / 0.7)) <= 1e-15 * 0.7e-3 + 1e-18  # the reversed one
            with torch.no_grad():  # autograd off (the DC Newton): the compiled code, batched
                f_c, j_c = nl.torch_eval(torch.tensor([[v], [0.5 * v]], dtype=F64), theta, jacobian=True)
            np.testing.assert_array_equal(f_c[0].numpy(), f_n)
            np.testing.assert_array_equal(j_c[0].numpy(), j_n)
            np.testing.assert_allclose(f_c[1].numpy(), nl.torch_eval(torch.tensor([0.5 * v], dtype=F64), theta)
                                       .detach().numpy(), rtol=1e-14, atol=1e-30)
        assert nl.junctions == (0,)
    finally:
        registry._FAMILIES.pop("toy_tanh", None)


def test_bjt_model_keys_are_program_parameters() -> None:
    """The program reads exactly the derived quantities the torch temperature update produces."""
    d = bjt_model({})
    prog = registry.family("bjt").program(registry.family("bjt").all_features)
    assert set(prog.param_names) <= set(d)
    dd = diode_model({})
    prog = registry.family("diode").program(registry.family("diode").all_features)
    assert set(prog.param_names) <= set(dd)


# ----------------------------------------------------------------------------- the JFET: one new module

JFET_CARDS = {
    "default": ("NJF", ""),
    "j201": ("NJF", "VTO=-0.8 BETA=1.3m LAMBDA=0.03 IS=1e-13 B=0.6 PB=0.7 CGS=4p CGD=3p"),
    "pjf": ("PJF", "VTO=-1.5 BETA=0.5m LAMBDA=0.02 IS=2e-14 B=1.2 PB=0.9"),
}


def _jfet_program(card: str, kind: str) -> tuple:
    """The JFET family, its theta for ``card`` at area 1.5 and m 2 (the instance both tests sweep), its program."""
    from circuitsim.devices.jfet import JFET_ALIASES

    fam = registry.family("jfet")
    p = {JFET_ALIASES.get(k, k): v for k, v in card_params(card, JFET_ALIASES).items()}
    scaled = fam.instance_params(tensors(p), {"AREA": torch.tensor(1.5, dtype=F64), "M": torch.tensor(2.0, dtype=F64)},
                                 kind)
    prog, gen, _ = fam.code(None)
    return fam, fam.theta(scaled, kind).numpy(), prog, gen


@needs_ngspice
@pytest.mark.parametrize("name", list(JFET_CARDS))
def test_jfet_matches_ngspice(name: str) -> None:
    """The generated JFET (one module, one registration line) against ngspice's DC sweep to 1e-9."""
    kind, card = JFET_CARDS[name]
    s = 1 if kind == "NJF" else -1
    body = (f"VD d 0 0\nVG g 0 0\nJ1 d g 0 jm area=1.5 m=2\n.model jm {kind}({card})\n"
            f".dc VD {-2 * s} {3 * s} {0.05 * s} VG {-2.5 * s} {0.6 * s} {0.3 * s}")
    vecs = ["@j1[vgs]", "@j1[vgd]", "@j1[id]", "@j1[ig]", "@j1[gm]", "@j1[gds]", "@j1[ggs]", "@j1[ggd]"]
    d = dict(zip(vecs, ngspice_vectors(body, vecs).T))
    assert d["@j1[vgs]"].size == 101 * 11
    assert registry.family_for_model_type(kind) is registry.family("jfet")
    fam, vec, prog, gen = _jfet_program(card, kind)
    # ngspice's states are in the N-channel frame (vgs = type * (V(g) - V(s'))); so is the program
    vt = [torch.tensor(d["@j1[vgs]"]), torch.tensor(d["@j1[vgd]"])]
    (igs, igd, ids, _, _), jac = torch_call(gen, prog, vt, slots_of(fam, vec, prog), True)
    m = 1.0  # ngspice's reported currents and conductances include the multiplier M, as ours do
    assert_close((ids - igd).numpy() / m, d["@j1[id]"], 1e-9, 1e-15, f"{name} id")
    assert_close((igs + igd).numpy() / m, d["@j1[ig]"], 1e-9, 1e-15, f"{name} ig")
    assert_close(jac[0][0].numpy() / m, d["@j1[ggs]"], 1e-9, 1e-18, f"{name} ggs")
    assert_close(jac[1][1].numpy() / m, d["@j1[ggd]"], 1e-9, 1e-18, f"{name} ggd")
    # channel: d ids/d vgd = -gds (vds = vgs - vgd); in normal mode d ids/d vgs = gm + gds
    assert_close(-jac[2][1].numpy() / m, d["@j1[gds]"], 1e-9, 1e-18, f"{name} gds")
    normal = d["@j1[vgs]"] >= d["@j1[vgd]"]
    assert_close(jac[2][0].numpy()[normal] / m, (d["@j1[gm]"] + d["@j1[gds]"])[normal], 1e-9, 1e-18, f"{name} gm")
    assert np.abs(d["@j1[id]"]).max() > 1e-5  # the channel conducts somewhere in the sweep


@needs_ngspice
@pytest.mark.parametrize("name", [n for n, (_, card) in JFET_CARDS.items() if "CGS" in card] + ["pjf_caps"])
def test_jfet_charges_match_ngspice(name: str) -> None:
    """The gate charges qgs, qgd (jfetload.c, both sides of FC*PB) and their capacitances against ngspice, to 1e-9.

    ngspice keeps a JFET's charges in its state after a transient step (here 2 ns at constant bias), and puts the
    capacitances in those slots at .op (jfetload.c, MODEINITSMSIG); the points are reverse-biased, cut-off and
    forward past FC*PB on each junction (F1, F2, F3's region).
    """
    from test_mosfet import _ngspice_ops


    kind, card = ("PJF", JFET_CARDS["pjf"][1] + " CGS=2p CGD=1.5p FC=0.4") if name == "pjf_caps" else JFET_CARDS[name]
    s = 1 if kind == "NJF" else -1
    # (VB is unused: _ngspice_ops alters VD, VG and VB at each point)
    body = f"VD d 0 0\nVG g 0 0\nVB b 0 0\nRb b 0 1k\nJ1 d g 0 jm area=1.5 m=2\n.model jm {kind}({card})"
    pts = [(s * vd, s * vg, 0.0) for vd, vg in [(1.5, -0.3), (3.0, -1.0), (-1.0, 0.2), (0.2, 0.5), (-0.5, 0.45),
                                                (2.0, -2.5)]]
    vecs = ["@j1[vgs]", "@j1[vgd]", "@j1[qgs]", "@j1[qgd]"]
    q = dict(zip(vecs, _ngspice_ops(body, pts, vecs, "tran 1n 2n").T))
    c = dict(zip(vecs, _ngspice_ops(body, pts, vecs).T))
    fam, vec, prog, gen = _jfet_program(card, kind)
    vt = [torch.tensor(q["@j1[vgs]"]), torch.tensor(q["@j1[vgd]"])]
    (_, _, _, qgs, qgd), jac = torch_call(gen, prog, vt, slots_of(fam, vec, prog), True)
    assert_close(qgs.numpy(), q["@j1[qgs]"], 1e-9, 1e-25, f"{name} qgs")
    assert_close(qgd.numpy(), q["@j1[qgd]"], 1e-9, 1e-25, f"{name} qgd")
    assert np.array_equal(c["@j1[vgs]"], q["@j1[vgs]"]) and np.array_equal(c["@j1[vgd]"], q["@j1[vgd]"])
    assert_close(jac[3][0].numpy(), c["@j1[qgs]"], 1e-9, 1e-25, f"{name} cgs")
    assert_close(jac[4][1].numpy(), c["@j1[qgd]"], 1e-9, 1e-25, f"{name} cgd")
    # both sides of FC*PB seen (0.35 V for j201, 0.36 V for pjf_caps)
    assert (np.abs(q["@j1[qgs]"]) > 1e-13).all() and (q["@j1[vgs]"] * s > 0.36).any()
