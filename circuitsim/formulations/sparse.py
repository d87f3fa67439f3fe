"""``method="sparse"``: DK's discrete system with a sparse Newton solve, for circuits with many devices.

DK (:mod:`circuitsim.formulations.dk`) eliminates every MNA unknown and runs Newton on the port
voltages ``v``: ``g(v) = p + K f(v) - v`` with the dense Newton matrix ``I - K J``, whose LU costs
``Nv^3 / 3`` per iteration, and whose fully unrolled compiled code (every device instance inlined at
every call site) takes half an hour to compile for the twelve-transistor Big Muff (36 ports).  This
module keeps DK's residual, state and matrices (so it is the same discrete system, and DK's
substepping, streaming, operating point and implicit-function adjoint apply unchanged) and solves
each sample with the sparse direction of :mod:`circuitsim.kernels.sparse_lu`::

    (I - K J)^-1 g = g - Nv_U (S0 + W_U J Nv_U)^-1 W_U J g

``U``: the unknowns the devices touch (port rows of ``Nv``, injection rows of ``W = Wi + 2/T Wq``),
less the ones a voltage source fixes (their response to any injection is zero); ``S0``: the Schur
complement of all other unknowns in ``M = G + 2/T Cm`` (Golub & Van Loan, *Matrix Computations*,
4th ed., sec. 3.2.10), which is as sparse as the circuit's stages are loosely coupled.  The
elimination order (minimum degree, Tinney & Walker, Proc. IEEE 55(11), 1967, scheme 2) and the
symbolic fill are computed once here, and the stages that only ideal sources join found as independent
blocks (:func:`_blocks`); the compiled LU is generated from them as straight-line code.  The device
code is the families' generated code called in a loop over instances, so the generated module
does not grow with the circuit (:func:`circuitsim.kernels.sparse_lu.device_loops`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from types import ModuleType

import numpy as np
import torch

from circuitsim.errors import UsageError
from circuitsim.formulations.base import AbstractCircuitModule
from circuitsim.formulations.dk import DKMatrices, DKModule, state_basis
from circuitsim.kernels import codegen, sparse_lu, statespace
from circuitsim.kernels.core import StepFormulation
from circuitsim.kernels.nonlinearity import DeviceBlock
from circuitsim.system.mna_system import DTYPE, MNAMatrices, MNATopology

# Newton iterations of the sparse solve before a sample goes to the core's dense Newton
MAX_ITER = 20
# DK's ports at which load/simulate choose the sparse solve by default (circuitsim.api.choose_method):
# below, DK's dense Newton is at least as fast and its module compiles in seconds
AUTO_PORTS = 16


def fingerprint(K: np.ndarray) -> float:
    """``sum_ik (1 + (i Nf + k) mod 7) K_ik``: tells the ``K`` the factorisation was made for from others."""
    w = 1.0 + (np.arange(K.size) % 7)
    return float(np.dot(w, np.ascontiguousarray(K, dtype=np.float64).reshape(-1)))


def minimum_degree(adj: list[set[int]]) -> list[int]:
    """An elimination order of the symmetric pattern ``adj`` (neighbour sets): repeatedly the node of
    least degree (lowest index on ties), its neighbours joined into a clique (Tinney & Walker 1967)."""
    adj = [set(a) - {i} for i, a in enumerate(adj)]
    alive = set(range(len(adj)))
    order = []
    while alive:
        k = min(alive, key=lambda i: (len(adj[i]), i))
        nb = adj[k]
        for i in nb:
            adj[i] |= nb
            adj[i] -= {i, k}
        alive.remove(k)
        order.append(k)
    return order


def _blocks(pat: np.ndarray, nl, nv_rows: list, w_cols: list) -> tuple[list[int], np.ndarray, np.ndarray, int]:
    """The independent blocks of the sparse system: the components of ``pat`` (``S0`` and the device stamps on
    ``U``), a device joining every unknown it touches.  Returns the block of each unknown, of each port and of
    each device output (a device that touches no unknown: block 0), and the number of blocks (at least 1)."""
    n = pat.shape[0]
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(pat | pat.T)):
        parent[root(int(i))] = root(int(j))
    dev = []
    for blk, dc in zip(nl.blocks, nl._devices):
        us = [c for port in blk.ports for c, _ in nv_rows[port]] + [r for o in dc.outs for r, _ in w_cols[o]]
        for u in us[1:]:
            parent[root(u)] = root(us[0])
        dev.append(us[0] if us else None)
    number: dict[int, int] = {}
    for u in dev:
        if u is not None:
            number.setdefault(root(u), len(number))
    port_block = np.zeros(nl.n_ports, np.int64)
    out_block = np.zeros(nl.n_outputs, np.int64)
    for blk, dc, u in zip(nl.blocks, nl._devices, dev):
        b = 0 if u is None else number[root(u)]
        port_block[list(blk.ports)] = b
        out_block[list(dc.outs)] = b
    return [number.get(root(i), 0) for i in range(n)], port_block, out_block, max(1, len(number))


def _interleave(order: list[int], block: list[int]) -> list[int]:
    """``order`` with the blocks' pivots taken in turn (each block's in its order in ``order``): independent
    blocks, so the fill and the operations of the elimination are those of ``order``."""
    runs: dict[int, list[int]] = {}
    for i in order:
        runs.setdefault(block[i], []).append(i)
    seqs = list(runs.values())
    return [s[k] for k in range(max((len(s) for s in seqs), default=0)) for s in seqs if k < len(s)]


class SparseNotApplicable(UsageError):
    """The circuit has a structure the sparse solve does not handle (``load``'s automatic choice takes DK)."""


def _schur(M: torch.Tensor, keep: np.ndarray, drop: np.ndarray) -> torch.Tensor:
    """``M_kk - M_kd M_dd^-1 M_dk``: the system on ``keep`` after eliminating ``drop``."""
    kk = M[keep][:, keep]
    if drop.size == 0:
        return kk
    try:
        return kk - M[keep][:, drop] @ torch.linalg.solve(M[drop][:, drop], M[drop][:, keep])
    except RuntimeError as exc:  # torch's LinAlgError
        raise SparseNotApplicable(
            "method 'sparse': the unknowns no device touches are not solvable on their own (as with an ideal "
            "voltage or controlled source between device nodes); use method 'dk'") from exc


class SparsePlan:
    """The structure of the sparse solve of one circuit (computed once) and its generated module.

    Attributes: ``unknowns`` (MNA indices of ``U`` in elimination order), ``fill`` (non-zeros of the
    LU pattern), ``flops`` (multiply-adds of one numeric factorisation), ``module``.
    """

    def __init__(self, topo: MNATopology, m: MNAMatrices, sample_rate: float):
        nl = topo.nonlinearity
        if any(not isinstance(b, DeviceBlock) for b in nl.blocks):
            raise SparseNotApplicable("method 'sparse' solves device blocks only; this circuit has behavioural "
                                      "sources (use method 'dk')")
        self.sample_rate = float(sample_rate)
        self.theta0 = int(m.theta.numel())
        nv_m = m.Nv.detach().numpy()
        w_m = (m.Wi.detach().abs() + m.Wq.detach().abs()).numpy()
        n_all = m.G.shape[0]
        touched = sorted(set(np.nonzero(np.abs(nv_m).sum(0))[0]) | set(np.nonzero(w_m.sum(1))[0]))
        M = (m.G + 2.0 * self.sample_rate * m.Cm).detach()
        # unknowns a voltage source fixes: no response to an injection anywhere in U (row of M^-1 is 0)
        resp = np.linalg.solve(M.numpy(), np.eye(n_all)[:, touched])[touched] if touched else np.zeros((0, 0))
        big = np.abs(resp).max() if resp.size else 0.0
        keep = [u for r, u in zip(resp, touched) if np.abs(r).max() > 1e-12 * big]
        # the pattern of S0: exact zeros at the netlist's values and at two random sets of values on the
        # same structure (a pattern that is too sparse would only slow Newton: the residual is exact)
        rng = np.random.default_rng(0)
        pats = []
        for trial in range(3 if keep else 0):  # (a linear circuit has no U)
            G, C = m.G.detach().clone(), m.Cm.detach().clone()
            if trial:
                G = G * torch.as_tensor(np.exp(rng.uniform(-1, 1, G.shape)))
                C = C * torch.as_tensor(np.exp(rng.uniform(-1, 1, C.shape)))
            s0 = _schur(G + 2.0 * self.sample_rate * C, *self._split(keep, n_all)).numpy()
            pats.append(np.abs(s0) > 1e-15 * max(np.abs(s0).max(), 1e-300))
        n = len(keep)
        local = {u: i for i, u in enumerate(keep)}
        pat = np.logical_or.reduce(pats) if n else np.zeros((0, 0), bool)
        pat |= np.eye(n, dtype=bool)
        nv_rows = [[(local[j], c) for j, c in enumerate(row) if c != 0 and j in local] for row in nv_m]
        w_full = (m.Wi.detach() + 2.0 * self.sample_rate * m.Wq.detach()).numpy()  # W = Wi + 2/T Wq
        w_cols = [[(local[i], c) for i, c in enumerate(col) if c != 0 and i in local] for col in w_full.T]
        # J slots: (output, port) of every device output and port, with the device groups
        slots: list[tuple[int, int]] = []
        groups: dict[str, dict] = {}
        lim: dict[str, list] = defaultdict(list)
        for blk, dc in zip(nl.blocks, nl._devices):
            fam = topo_family(blk.family)
            off = blk.theta.start if isinstance(blk.theta, slice) else int(blk.theta)
            gr = groups.setdefault(dc.fname, {"fname": dc.fname, "size": len(fam.layout), "nport": len(blk.ports),
                                              "nout": len(dc.outs), "pol": dc.pol >= 0, "OFF": [], "POL": [],
                                              "SGN": [], "PORT": [], "OUT": [], "JS": []})
            gr["OFF"].append(off)
            gr["POL"].append(max(dc.pol, 0))
            gr["SGN"].append(float(blk.sign))
            gr["PORT"].append(list(blk.ports))
            gr["OUT"].append(list(dc.outs))
            js = []
            for o in dc.outs:
                for port in blk.ports:
                    js.append(len(slots))
                    slots.append((o, port))
            gr["JS"].append(js)
            for spec in fam.limits:  # as build_nonlinearity's nl_prepare / nl_limit
                lim["PORT"].append(blk.ports[spec.port])
                vt_str = isinstance(spec.vt, str)
                lim["VT"].append(off + fam.layout.index(spec.vt) if vt_str else -1)
                lim["VTC"].append(0.0 if vt_str else float(spec.vt))
                lim["VC"].append(off + fam.layout.index(spec.vcrit))
                lim["POL"].append(dc.pol)
                lim["SGN"].append(float(blk.sign))
        for o, port in slots:  # the device stamps W_U J Nv_U
            for r, _ in w_cols[o]:
                for c, _ in nv_rows[port]:
                    pat[r, c] = True
        # blocks: the components of that pattern with the devices that touch them.  Stages that only an ideal
        # source joins (the Big Muff's three channels share the supply and the input) are independent: K has
        # no entry between two blocks (fm_prepare checks it on the K it is given), which sp_kf skips
        unk_block, port_block, out_block, nb = _blocks(pat, nl, nv_rows, w_cols)
        self.blocks = nb
        # elimination order (minimum degree, then the blocks' pivots taken in turn: the same fill and
        # operations, and consecutive pivots of independent blocks overlap in the processor; the blocks
        # one after the other made the factorisation and the direction twice as slow on the Big Muff)
        order = _interleave(minimum_degree([set(np.nonzero(pat[i] | pat[:, i])[0]) for i in range(n)]), unk_block)
        perm = np.array(order, dtype=np.int64)
        inv = np.empty(n, np.int64)
        inv[perm] = np.arange(n)
        self.unknowns = [keep[i] for i in order]
        P = pat[perm][:, perm].copy()
        lptr, lrow, uptr, ucol = [0], [], [0], []
        for k in range(n):
            rows = [i for i in range(k + 1, n) if P[i, k]]
            cols = [j for j in range(k + 1, n) if P[k, j]]
            for i in rows:
                P[i, cols] = True
            lrow += rows
            ucol += cols
            lptr.append(len(lrow))
            uptr.append(len(ucol))
        self.fill_pos = np.nonzero(P.reshape(-1))[0]
        self.fill = int(self.fill_pos.size)
        self.flops = int(sum((lptr[k + 1] - lptr[k]) * (1 + uptr[k + 1] - uptr[k]) for k in range(n)))
        self._keep = np.array(self.unknowns, dtype=np.int64)
        self._drop = self._split(self.unknowns, n_all)[1]
        st_pos, st_slot, st_coef, bw_row, bw_slot, bw_coef = [], [], [], [], [], []
        for s, (o, port) in enumerate(slots):
            for r, cr in w_cols[o]:
                bw_row.append(inv[r])
                bw_slot.append(s)
                bw_coef.append(cr)
                for c, cc in nv_rows[port]:
                    st_pos.append(inv[r] * n + inv[c])
                    st_slot.append(s)
                    st_coef.append(cr * cc)
        nvp_ptr, nvp_node, nvp_coef = [0], [], []
        for row in nv_rows:
            nvp_node += [inv[c] for c, _ in row]
            nvp_coef += [c for _, c in row]
            nvp_ptr.append(len(nvp_node))
        nj, nlim, nvv = len(slots), len(lim["PORT"]), nl.n_ports
        bports = [np.nonzero(port_block == b)[0] for b in range(nb)]
        bouts = [np.nonzero(out_block == b)[0] for b in range(nb)]
        kcols = np.cumsum([0] + [len(bp) * len(bo) for bp, bo in zip(bports, bouts)])
        layout = {}
        at = 0
        for name, size in (("W_A", self.fill), ("W_JV", nj), ("W_JE", nj), ("W_G", nvv), ("W_B", n), ("W_DZ", nvv),
                           ("W_ZT", nvv), ("W_ZP", nvv), ("W_PP", nvv), ("W_T", nvv), ("W_FLAG", 1)):
            layout[name] = at
            at += size
        where = sparse_lu.fill_index(self.fill_pos)  # a is stored by its fill (sparse_lu.lu_source)
        ints: dict = {
                "JS_OUT": [o for o, _ in slots], "JS_PORT": [p for _, p in slots],
                **{f"LIM_{k}": lim[k] for k in ("PORT", "VT", "VC", "POL")},
                "SP_PORTS": np.concatenate(bports), "SP_PLO": np.cumsum([0] + [len(b) for b in bports]),
                "SP_OUTS": np.concatenate(bouts), "SP_OLO": np.cumsum([0] + [len(b) for b in bouts]),
                "SP_CLO": 3 * nlim + 1 + kcols, "SP_PBLK": port_block, "SP_OBLK": out_block}
        floats = {"LIM_VTC": lim["VTC"], "LIM_SGN": lim["SGN"]}
        nvp = [list(zip(nvp_node[nvp_ptr[i]:nvp_ptr[i + 1]], nvp_coef[nvp_ptr[i]:nvp_ptr[i + 1]]))
               for i in range(len(nv_rows))]
        st = [(where[q], sl, c) for q, sl, c in zip(st_pos, st_slot, st_coef)]
        stamps = sparse_lu.stamp_source(n, self.theta0, st, list(zip(bw_row, bw_slot, bw_coef)), [p for _, p in slots],
                                        nvp)
        # the nonlinearity's part: the device loops, their index arrays and the J slots (device_loops)
        nl_ints: dict = {"JS_OUT": ints.pop("JS_OUT"), "JS_PORT": ints.pop("JS_PORT")}
        nl_floats: dict = {}
        glist = []
        for g_i, gr in enumerate(groups.values()):
            pre = f"SPD{g_i}"
            gr["prefix"], gr["n"] = pre, len(gr["OFF"])
            glist.append(gr)
            nl_ints.update({f"{pre}_OFF": gr["OFF"], f"{pre}_POL": gr["POL"]})
            nl_floats[f"{pre}_SGN"] = gr["SGN"]
            for key in ("PORT", "OUT", "JS"):
                nl_ints[f"{pre}_{key}"] = np.asarray(gr[key], dtype=np.int64).reshape(-1)
        nl_scalars = {"SP_NJ": nj, "N_WORK": max(1, nj), **{f"SPD{i}_N": gr["n"] for i, gr in enumerate(glist)}}
        nl_src = sparse_lu.constants(nl_ints, nl_floats, nl_scalars)
        # 2-D index arrays: the loops read PREFIX_PORT[d, j]
        nl_src += "".join(f"{gr['prefix']}_{key} = {gr['prefix']}_{key}.reshape({gr['n']}, {w})\n"
                          for gr in glist for key, w in (("PORT", gr["nport"]), ("OUT", gr["nout"]),
                                                         ("JS", gr["nout"] * gr["nport"])))
        nl_src += sparse_lu.device_loops(glist)
        self.nl_source = (nl.nb_source + "\n\n# ---- method 'sparse': the device loops, in place of nl_eval and "
                          "nl_vjp_theta above\n" + nl_src)
        # lc: the limiting constants, LC_OK, then each block's part of K by columns (sparse_lu.fm_prepare)
        scalars = {"NZ": nvv, "NPHI": nl.n_outputs, "SP_N": n, "SP_NLIM": nlim, "SP_X0": self.theta0,
                   "SP_NFILL": self.fill, "SP_MAXIT": MAX_ITER, "FM_EXPLICIT": 1, "LC_OK": 3 * nlim, "SP_NB": nb,
                   "FM_LC": 3 * nlim + 1 + int(kcols[-1]), "FM_WORK": at, **layout}
        src = (sparse_lu.constants(ints, floats, scalars)
               + sparse_lu.lu_source(n, lptr, lrow, uptr, ucol, self.fill_pos) + stamps)
        self.step = StepFormulation("sparse", (*sparse_lu.HOOKS, statespace.fm_vjp), src)
        self._nl = nl
        self._module: ModuleType | None = None

    @staticmethod
    def _split(keep: list[int], n_all: int) -> tuple[np.ndarray, np.ndarray]:
        ks = set(keep)
        return np.array(keep, dtype=np.int64), np.array([i for i in range(n_all) if i not in ks], dtype=np.int64)

    @property
    def module(self) -> ModuleType:
        """The generated module (a DK module: ``P = (K,)``, ``z = v``, ``phi = f``) with the sparse solve."""
        if self._module is None:
            self._module = codegen.step_module(self.nl_source, self.step)
        return self._module

    def extras(self, m: MNAMatrices, K: torch.Tensor) -> torch.Tensor:
        """What ``theta`` carries after the device parameters: ``fingerprint(K)`` and ``S0`` at the fill
        positions (siemens), for ``m`` at this plan's sample rate."""
        with torch.no_grad():
            M = m.G.detach() + 2.0 * self.sample_rate * m.Cm.detach()
            s0 = _schur(M, self._keep, self._drop).reshape(-1)[torch.as_tensor(self.fill_pos)]
            head = torch.tensor([fingerprint(K.detach().numpy())], dtype=DTYPE)
            return torch.cat([head, s0.to(DTYPE)])


def topo_family(name: str):
    """The registered device family ``name``."""
    from circuitsim.devices.registry import family

    return family(name)


class SparseModule(DKModule):
    """DK with the sparse Newton solve (module docstring); ``plan`` holds the structure and its sizes."""

    method = "sparse"
    sparse_solve = True  # False: the core's dense Newton on every sample (same residual; for checks)

    def __init__(self, *args, **kwargs):
        AbstractCircuitModule.__init__(self, *args, **kwargs)
        topo = self.topology
        # the first assembly's solvability check evaluates the devices (Nonlinearity.eval_batch): it waits
        # until this module is in place, whose device loops compile in seconds where the nonlinearity's own
        # unrolled code takes minutes on a big circuit
        topo._solvable_checked = True
        self.plan = SparsePlan(topo, topo.assemble(topo.leaf_values()), self.sample_rate)
        # the nonlinearity's own module (its batch evaluation: the DC point) evaluates with the loops, and
        # every DK entry point (run_state_space, statespace.forward/backward) runs the sparse module
        topo.nonlinearity.nb_source = self.plan.nl_source
        topo.nonlinearity._module = self.plan.module
        topo._solvable_checked = False
        self._q = state_basis(topo.assemble(topo.leaf_values()))  # as DKModule.__init__

    def dk(self) -> tuple[MNAMatrices, DKMatrices]:
        """DK's matrices, with ``theta`` extended by the sparse solve's data (:meth:`SparsePlan.extras`).

        With ``sparse_solve = False`` the fingerprint is NaN, so every sample runs the core's dense Newton
        on DK's exact ``I - K J`` (the check that the sparse direction changes nothing but the speed).
        """
        m, d = super().dk()
        extra = self.cached(f"sparse{int(self.sparse_solve)}", lambda: self.plan.extras(m, d.K))
        if not self.sparse_solve:
            extra = torch.cat([torch.full((1,), math.nan, dtype=DTYPE), extra[1:]])
        return replace(m, theta=torch.cat([m.theta, extra])), d


__all__ = ["AUTO_PORTS", "SparseModule", "SparseNotApplicable", "SparsePlan", "fingerprint", "minimum_degree"]
