"""The port-Hamiltonian step in plain torch: the gradient oracle of the compiled :class:`PHSModule`.

Each sample solves the discrete-gradient step (docs/phs.md, eqs. PH-1 and PH-2) with a torch Newton
on all MNA unknowns ``x̄`` and the instant output (eq. PH-3) with a second Newton on ``[x_n; λ]``,
then attaches the implicit-function gradient with one Newton step at each solution.  Autograd
through the per-sample loop gives the gradients: slow (milliseconds per sample), for short signals.
"""

from __future__ import annotations

import torch

from circuitsim.solvers.dc import operating_point
from circuitsim.solvers.newton import NewtonError, newton
from circuitsim.system.mna_system import DTYPE


def _solve(nl, theta, nv, a_mat, w_mat, rhs, z0, off=0.0):  # noqa: ANN001, ANN202
    """``a_mat z + w_mat f(nv z + off) = rhs`` by Newton (no grad), then one differentiable Newton step."""
    a_d, w_d, nv_d, th_d, rhs_d = (t.detach() for t in (a_mat, w_mat, nv, theta, rhs))
    off_d = off.detach() if isinstance(off, torch.Tensor) else off

    def fn(z):  # noqa: ANN001, ANN202
        f, jf = nl.torch_eval(z @ nv_d.T + off_d, th_d, jacobian=True)
        return z @ a_d.T + f @ w_d.T - rhs_d, a_d + w_d @ jf @ nv_d

    with torch.no_grad():
        r = newton(fn, z0, max_iter=200)
    if not r.converged:
        raise NewtonError(f"reference PH step: residual {r.residual:.3g}", 0, 0.0)
    z = r.x
    f, jf = nl.torch_eval(z @ nv.T + off, theta, jacobian=True)
    res = z @ a_mat.T + f @ w_mat.T - rhs
    jac = (a_mat + w_mat @ jf @ nv).detach()
    return z - torch.linalg.solve(jac, res.unsqueeze(-1)).squeeze(-1)


def _charge_step(model, m):  # noqa: ANN001, ANN202
    """The step's matrices on ``z = [x̄; w_n; s_d]`` with junction charges and damped capacitors (docs/phs.md).

    ``A_step x̄ + Wi f(v̄) + Wq (Q(w_n) - Q)/T + Wd h = rhs``, ``rows x̄ = (w_n - g)/2`` and
    ``2 A_dᵀ x̄ - s_d + h = s_d⁻``, with ``[f, f(w_n), g, h]`` the step nonlinearity at the ports
    ``[Nv x̄; w_n; w⁻; w⁻⁻; w⁻⁻⁻; s_d; s_d⁻; s_d⁻⁻; s_d⁻⁻⁻]`` (the previous values as offsets).
    """
    st = model.storage
    ch = st.charges
    n, nq, nf, nd = m.G.shape[0], ch.size, m.Wi.shape[1], len(st.damped)
    nF, np_ = ch.step_nl.n_outputs, m.Nv.shape[0]
    fs = model.sample_rate
    zs = lambda *shape: torch.zeros(*shape, dtype=DTYPE)  # noqa: E731
    eye = lambda k: torch.eye(k, dtype=DTYPE)  # noqa: E731
    d_idx = list(st.damped)
    a_d = st.linear[:, d_idx]
    c = model.storage_coefficients()[d_idx]
    wqc = m.Wq[:, ch.outs] * fs
    w_top = torch.cat([m.Wi, zs(n, nF - nf - nd), a_d * c * fs], dim=1).index_add(
        1, torch.tensor(ch.q_index, dtype=torch.long), wqc)
    w_mat = torch.cat([w_top, torch.cat([zs(nq, nF - nq - nd), 0.5 * eye(nq), zs(nq, nd)], dim=1),
                       torch.cat([zs(nd, nF - nd), eye(nd)], dim=1)])
    a_bot = torch.cat([torch.cat([ch.rows, -0.5 * eye(nq), zs(nq, nd)], 1),
                       torch.cat([2.0 * a_d.T, zs(nd, nq), -eye(nd)], 1)])
    nz = n + nq + nd
    nv = torch.cat([torch.cat([m.Nv, zs(np_, nq + nd)], 1), torch.cat([zs(nq, n), eye(nq), zs(nq, nd)], 1),
                    zs(3 * nq, nz), torch.cat([zs(nd, n + nq), eye(nd)], 1), zs(3 * nd, nz)])
    return w_mat, a_bot, nv, wqc


def reference_simulate(model, u: torch.Tensor, s_init: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ANN001
    """Output volts (batch, time) of ``model`` (a :class:`PHSModule`) for input volts ``u`` (batch, time).

    The unknowns are deviations from the DC operating point, as in the compiled step (docs/phs.md, "Deviation
    form"): each Newton solves ``a (z_op + δ) + w f(nv δ + off + nv z_op) = rhs`` as
    ``a δ + w (f - f_op) = rhs - a z_op - w f_op``, the right side formed from the deviations of the sources, the
    storage and the charges (the DC equations cancel the bias terms exactly).  In absolute node voltages the
    residual of a 1 Ω collector resistance at 9 V carries 9 A terms, and its rounding (~4e-13 A) leaves ~1e-10 of
    error in the gradient w.r.t. that resistance: 1e-3 of it on the DS-1 booster at a 2 mV input.
    """
    topo, st = model.topology, model.storage
    nl = topo.nonlinearity
    m = topo.assemble(model.leaves())
    c = model.storage_coefficients()
    a_s, q = st.incidence, st.basis
    n, r = m.G.shape[0], q.shape[1]
    T = 1.0 / model.sample_rate
    src = model.source_values(m, u)
    with torch.no_grad():
        x_op, _ = operating_point(topo, m, src[:, 0])
    x_op = topo.implicit_step(m, x_op, m.G, m.Wi, src[:, 0] @ m.Bu.T)  # differentiable DC point
    v_op = x_op @ m.Nv.T
    f_op = nl.torch_eval(v_op, m.theta)
    s_op = x_op @ a_s
    ds_all = torch.zeros_like(s_op) if s_init is None else s_init.to(DTYPE).expand(u.shape[0], -1) - s_op
    ns, ch = st.n_linear, st.charges
    ds, a_lin = ds_all[:, :ns], a_s[:, :ns]
    a_step = m.G + (2.0 / T) * m.Cm  # eq. PH-1
    if ch is not None:
        w_mat, a_bot, nv_c, wqc = _charge_step(model, m)
        d_idx, nd = list(st.damped), len(st.damped)
        d_t = torch.tensor(d_idx, dtype=torch.long)
        a_c = torch.cat([torch.cat([a_step, torch.zeros(a_step.shape[0], ch.size + nd, dtype=DTYPE)], 1), a_bot])
        w_op, sd_op = s_op[:, ns:], s_op[:, d_idx]
        # the DC point in z = [x̄; w_n; s_d] and the step nonlinearity there (every history value at rest)
        zc_ref = torch.cat([x_op, w_op, sd_op], dim=1)
        fc_op = ch.step_nl.torch_eval(ch.step_ports(v_op, w_op, sd_op), m.theta)
        q_op = fc_op[:, ch.q_index]
        w = w_op + ds_all[:, ns:]
        q_prev = ch.step_nl.torch_eval(ch.step_ports(v_op, w, sd_op + ds[:, d_idx]), m.theta)[:, ch.q_index]
        w_hist, sd_hist = [w, w], [sd_op + ds[:, d_idx]] * 2  # the two sample instants before the step's start
        zc = torch.zeros_like(zc_ref)
    mi = torch.zeros(n + r, n + r, dtype=DTYPE) + torch.nn.functional.pad(m.G, (0, r, 0, r))
    mi[:n, n:] = q
    mi[n:, :n] = q.T
    wi_ext = torch.cat([m.Wi, torch.zeros(r, m.Wi.shape[1], dtype=DTYPE)])
    nv_ext = torch.cat([m.Nv, torch.zeros(m.Nv.shape[0], r, dtype=DTYPE)], dim=1)
    ys = [x_op @ m.out]
    dxbar = torch.zeros_like(x_op)
    dz = torch.zeros(u.shape[0], n + r, dtype=DTYPE)  # [x_n - x_op; λ] (λ_op = 0: Qᵀ x_op = recon s_op)
    for k in range(1, u.shape[1]):
        dmean = 0.5 * (src[:, k] + src[:, k - 1]) - src[:, 0]
        rhs = dmean @ m.Bu.T + (2.0 / T) * (ds * c) @ a_lin.T  # PH-1 less the DC equations
        if ch is None:
            dxbar = _solve(nl, m.theta, m.Nv, a_step, m.Wi, rhs + f_op @ m.Wi.T, dxbar.detach(), v_op)
            ds_all = ds = 2.0 * dxbar @ a_lin - ds  # eq. PH-2: midpoint discrete gradient
        else:  # junction charges: the discrete gradient of H(q) on their end voltages w_n
            zb = torch.zeros(u.shape[0], m.Nv.shape[0] + ch.size, dtype=DTYPE)
            sd = sd_op + ds[:, d_idx]
            off = torch.cat([zb, w, *w_hist, torch.zeros_like(sd), sd, *sd_hist], dim=1) + zc_ref @ nv_c.T
            rhs_c = torch.cat([rhs + (q_prev - q_op) @ wqc.T, torch.zeros(u.shape[0], ch.size, dtype=DTYPE),
                               ds[:, d_idx]], dim=1)
            zc = _solve(ch.step_nl, m.theta, nv_c, a_c, w_mat, rhs_c + fc_op @ w_mat.T, zc.detach(), off)
            n_x = a_step.shape[0]
            dxbar, dw_new, dsd_new = zc[:, :n_x], zc[:, n_x : n_x + ch.size], zc[:, n_x + ch.size :]
            q_prev = ch.step_nl.torch_eval(zc @ nv_c.T + off, m.theta)[:, ch.q_index]
            ds = (2.0 * dxbar @ a_lin - ds).index_copy(1, d_t, dsd_new)
            w_new = w_op + dw_new
            w, w_hist, sd_hist = w_new, [w, w_hist[0]], [sd, sd_hist[0]]
            ds_all = torch.cat([ds, dw_new], dim=1)
        rhs_i = torch.cat([(src[:, k] - src[:, 0]) @ m.Bu.T, ds_all @ st.recon.T], dim=1)  # eq. PH-3, deviations
        dz = _solve(nl, m.theta, nv_ext, mi, wi_ext, rhs_i + f_op @ wi_ext.T, dz.detach(), v_op)
        ys.append((x_op + dz[:, :n]) @ m.out)
    return torch.stack(ys, dim=1)


__all__ = ["reference_simulate"]
