"""The root of the tree, and the WDF composed into the per-sample state-space maps.

A WDF with a nonlinear root is a recursion in waves: the states are the delayed waves of the
capacitors and inductors (and, for junction charges at the root, the trapezoidal history
``σ[n] = 4/T q[n] - σ[n-1]``), the up-pass maps states and sources to the root's incident
waves, the root solves its devices, and the down-pass maps everything to the next states and
the output.  Propagating *basis vectors* through :func:`~circuitsim.formulations.wdf.waves.up_pass`
and :func:`~circuitsim.formulations.wdf.waves.down_pass` gives those maps as matrices over
``[states, sources, device outputs f]``::

    v[n]   = G x[n] + H s[n] + K f(v[n])     (the root's device port voltages)
    y[n]   = D x[n] + E s[n] + F f(v[n])
    x[n+1] = A x[n] + B s[n] + C f(v[n])

(docs/wdf.md eq. (8)), the layout of :func:`circuitsim.kernels.autograd.run_state_space`, so the compiled Newton core
and its implicit-function adjoint run the WDF, with gradients chained through these torch maps
to every port resistance and scattering entry.

Root equations.  One-port root on the node pair (p, q) facing a child of port resistance ``R``
and reflected wave ``a``: the child is a Thévenin source, so ``v = a - R i_dev`` with
``i_dev = sum_o c_o (f_i,o + 2/T f_q,o - σ_o)`` (``c_o = ±1`` the output's orientation), and the
wave sent back is ``b = 2 v - a`` (docs/wdf.md eq. (7)).
R-type root: ``X z = P R⁻¹ a + Bu s + Wq σ - (Wi + 2/T Wq) f``, ``v = Nv z``, ``b = 2 Pᵀ z - a``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuitsim.formulations.dk import StateSpaceMatrices
from circuitsim.formulations.wdf.tree import Leaf, WDFTree
from circuitsim.formulations.wdf.waves import (
    Adapted,
    Propagation,
    _contract,
    _signed,
    _stack,
    down_pass,
    node_voltage,
    port_pair_sign,
    record_nodes,
    up_pass,
)
from circuitsim.system.mna_system import DTYPE, MNATopology, _pair


@dataclass
class RootMaps:
    """The root's linear relations for one sample: ``v = p + K f``; ``finish(f)`` sends the waves down."""

    p: torch.Tensor  # (Nports, *shape)
    K: torch.Tensor  # (Nports, Nf)


class Layout:
    """Index layout of the recursion: states = C/L waves then charge histories; sources; outputs f."""

    def __init__(self, tree: WDFTree, topo: MNATopology):
        self.n_wave = len(tree.states)
        self.charges = [o for o, (_, q) in enumerate(topo.outputs) if q]
        self.nx = self.n_wave + len(self.charges)
        self.nu = len(topo.sources)
        self.nf = topo.nonlinearity.n_outputs
        self.nb = self.nx + self.nu + self.nf

    def sigma_index(self) -> dict[int, int]:
        return {o: self.n_wave + k for k, o in enumerate(self.charges)}


def root_pass(tree: WDFTree, topo: MNATopology, ad: Adapted, pr: Propagation, src: torch.Tensor,
              sigma: torch.Tensor, fs: float):
    """Root relations for the current up-pass.  ``sigma``: (Nf, *shape) charge histories (0 where none).

    Returns ``(p, K, finish)``: ``v = p + K f``; ``finish(f)`` runs the down-pass for device outputs
    ``f`` (Nf, *shape) and returns the node voltages ``v`` of the root's ports.
    """
    root = tree.root
    like = src[0]
    nf = topo.nonlinearity.n_outputs
    w = torch.tensor([2.0 * fs if q else 1.0 for _, q in topo.outputs], dtype=DTYPE)
    if root.kind in ("nonlinear", "source"):
        p_, q_ = root.nodes
        child, s = root.child
        a = _signed(pr.alpha[id(child)], s)
        R = ad.root_R
        if root.kind == "source":
            vs = sum(float(sg) * src[lf.channel] for lf, sg in root.chain)
            p = like.new_zeros((0, *like.shape))
            K = torch.zeros(0, nf, dtype=DTYPE)

            def finish(f: torch.Tensor) -> torch.Tensor:
                down_pass(tree, ad, pr, child, _signed(2.0 * vs - a, s), src)
                pr.known.append((p_, q_, vs))
                for lf, _ in root.chain:
                    pr.known.append((lf.nodes[0], lf.nodes[1], src[lf.channel]))
                return p

            return p, K, finish
        d = torch.tensor([port_pair_sign(row, p_, q_) for row in topo.ports], dtype=DTYPE)
        c = torch.tensor([port_pair_sign(col, p_, q_) for col, _ in topo.outputs], dtype=DTYPE)
        hist = _contract(c * (torch.tensor([1.0 if q else 0.0 for _, q in topo.outputs], dtype=DTYPE)), sigma)
        v0 = a + R * hist
        p = d.reshape(-1, *([1] * like.ndim)) * v0
        K = -R * torch.outer(d, c * w)

        def finish(f: torch.Tensor) -> torch.Tensor:
            v = v0 - R * _contract(c * w, f)
            down_pass(tree, ad, pr, child, _signed(2.0 * v - a, s), src)
            pr.known.append((p_, q_, v))
            return v

        return p, K, finish
    jn = root.junction
    dt = ad.root
    waves = _stack([_signed(pr.alpha[id(c)], s) for c, s in jn.children], like)
    z0 = _contract(dt.Zp, waves) + _contract(dt.Zs, src) + _contract(dt.Zq, sigma)
    p = _contract(dt.Nv, z0)
    K = dt.Nv @ dt.Zf

    def finish(f: torch.Tensor) -> torch.Tensor:
        z = z0 + _contract(dt.Zf, f)
        record_nodes(jn, dt, z, pr)
        vp = _contract(dt.Pt, z)
        for k, (c, s) in enumerate(jn.children):
            down_pass(tree, ad, pr, c, _signed(2.0 * vp[k] - waves[k], s), src)
        return vp

    return p, K, finish


def leaf_reflected(lf: Leaf, x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """A leaf's reflected wave from the state waves ``x`` (Nx, *shape) and sources (Nu, *shape)."""
    if lf.kind == "C":
        return x[lf.state]
    if lf.kind == "L":
        return -x[lf.state]
    if lf.kind == "V":
        return src[lf.channel]
    return torch.zeros_like(src[0])


WDFMatrices = StateSpaceMatrices  # the composed tree in the kernel's nine matrices


def step_rows(tree: WDFTree, topo: MNATopology, ad: Adapted, lay: Layout, fs: float, output: int,
              x: torch.Tensor, src: torch.Tensor, f: torch.Tensor | None = None):
    """One sample of the WDF for waves of any trailing shape.

    With ``f=None`` (symbolic use) ``f`` is taken as the basis rows of the device outputs; returns
    ``(p, K, x_next, y, v_root)`` where the device port voltages solve ``v = p + K f``.
    """
    pr = up_pass(tree, ad, lambda lf: leaf_reflected(lf, x, src), src)
    sig = lay.sigma_index()
    sigma = torch.stack([x[sig[o]] if o in sig else torch.zeros_like(src[0]) for o in range(lay.nf)]) \
        if lay.nf else src[:0]
    p, K, finish = root_pass(tree, topo, ad, pr, src, sigma, fs)
    return pr, p, K, finish, sigma


def compose(tree: WDFTree, topo: MNATopology, ad: Adapted, fs: float) -> WDFMatrices:
    """The nine state-space matrices of the WDF (see the module docstring)."""
    lay = Layout(tree, topo)
    eye = torch.eye(lay.nb, dtype=DTYPE)
    x = eye[: lay.nx]
    src = eye[lay.nx : lay.nx + lay.nu]
    fb = eye[lay.nx + lay.nu :]
    pr, p, K, finish, sigma = step_rows(tree, topo, ad, lay, fs, topo.output, x, src)
    finish(fb)
    y = node_voltage(pr.known, topo.output, src[0])
    nxt = [pr.beta[id(lf)] for lf in tree.states]
    for o in lay.charges:
        nxt.append(4.0 * fs * fb[o] - sigma[o])
    nxt_m = torch.stack(nxt) if nxt else eye[:0]
    v = p + K @ fb if lay.nf else eye[:0]
    # each row block split into its [x, s, f] columns: one autograd node per block (nine slices recorded nine,
    # whose backward each fills a zero matrix)
    cols = [lay.nx, lay.nu, lay.nf]
    A, B, C = torch.split(nxt_m, cols, dim=1)
    D, E, F = torch.split(y.unsqueeze(0), cols, dim=1)
    G, H, K = torch.split(v, cols, dim=1)
    return WDFMatrices(A=A, B=B, C=C, D=D, E=E, F=F, G=G, H=H, K=K)


def initial_state(tree: WDFTree, topo: MNATopology, ad: Adapted, lay: Layout, x_op: torch.Tensor,
                  f_q: torch.Tensor, fs: float) -> torch.Tensor:
    """WDF states (batch, Nx) at the DC operating point ``x_op`` (batch, n) of the MNA unknowns.

    Capacitor: ``a = b = v_C``.  Inductor (``v = 0``, current ``i_L``): stored ``a = R_L i_L``.
    Charge history: ``σ = 2/T q(v_op)`` (no charge current at DC).  ``f_q`` (batch, Nf) device outputs.
    """
    # capacitor k: v_C = sum_i c_i x_op[i] over its node pair; inductor k: the branch current (times R_L below):
    # one product with a constant selection matrix
    sel = torch.zeros(x_op.shape[1], lay.n_wave, dtype=DTYPE)
    for k, lf in enumerate(tree.states):
        for i, c in (_pair(*lf.nodes) if lf.kind == "C" else [(topo.branch[lf.name], 1.0)]):
            sel[i, k] = c
    x0 = x_op @ sel
    if any(lf.kind == "L" for lf in tree.states):
        one = torch.ones((), dtype=DTYPE)
        x0 = x0 * torch.stack([ad.R[id(lf)] if lf.kind == "L" else one for lf in tree.states])
    if lay.charges:
        x0 = torch.cat([x0, (2.0 * fs) * f_q[:, lay.charges]], dim=1)
    return x0


__all__ = ["Layout", "RootMaps", "WDFMatrices", "compose", "initial_state", "root_pass", "step_rows"]
