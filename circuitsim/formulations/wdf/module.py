"""``WDFModule``: a wave digital filter built automatically from the netlist (``method="wdf"``)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch

from circuitsim.formulations.base import AbstractCircuitModule, Diagnostics
from circuitsim.formulations.dk import DKState, first_output, record_newton_stats
from circuitsim.formulations.wdf.realize import Layout, WDFMatrices, compose, initial_state
from circuitsim.formulations.wdf.tree import Adaptor, Leaf, WDFTree, build_tree
from circuitsim.formulations.wdf.waves import Adapted, Adapter
from circuitsim.kernels.autograd import run_state_space
from circuitsim.kernels.codegen import step_module
from circuitsim.kernels.explicit_root import MAX_OMEGA_STEPS
from circuitsim.kernels.statespace import dk_step, explicit_plan
from circuitsim.system.mna_system import MNAMatrices

# the WDF's generated modules by nonlinearity source (the explicit-root structure follows from it)
_KERNELS: dict[str, ModuleType] = {}


class WDFModule(AbstractCircuitModule):
    """Wave digital filter: adaptor tree from the circuit graph, root solved on the compiled core.

    The tree (:mod:`~circuitsim.formulations.wdf.tree`) is built once; port resistances and
    scattering matrices are computed in torch from the component values (every R, C, L, pot and
    gain is learnable), and a knob change re-adapts only the adaptors above the changed leaves.
    The composed wave recursion runs in the compiled per-sample core with its implicit-function
    adjoint; the bilinear transform is the trapezoidal rule, so this is the same discrete system
    as DK (docs/wdf.md).
    """

    method = "wdf"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tree: WDFTree = build_tree(self.topology)
        self.adapter = Adapter(self.tree, self.topology, self.sample_rate)
        self.layout = Layout(self.tree, self.topology)

    def adapted(self) -> Adapted:
        """Port resistances and scattering at the current values (differentiable)."""
        return self.cached("wdf_adapted", lambda: self.adapter.adapt(self.leaves()))

    def wdf(self) -> tuple[MNAMatrices, Adapted, WDFMatrices]:
        m = self.matrices()
        ad = self.adapted()
        mats = self.cached("wdf", lambda: compose(self.tree, self.topology, ad, self.sample_rate))
        return m, ad, mats

    def _simulate(self, u: torch.Tensor, state: DKState | None) -> tuple[torch.Tensor, DKState]:
        # every root runs on the shared core: a linear tree with no unknowns, a diode or a pair with
        # the explicit Wright-omega root (kernels/explicit_root.py), anything else with Newton
        m, ad, w = self.wdf()
        s = self.source_values(m, u)
        diag = Diagnostics(samples=u.shape[1])
        nl = self.topology.nonlinearity
        if state is None:
            x_op, diag.operating_point = self.start_point(m, s[:, 0])
            v_op = x_op @ m.Nv.T
            # the device outputs at the operating point enter only the charge histories' initial values
            f_op = nl.torch_eval(v_op, m.theta) if self.layout.charges else x_op[:, :0]
            x0 = initial_state(self.tree, self.topology, ad, self.layout, x_op, f_op, self.sample_rate)
            y0 = (x_op @ m.out).unsqueeze(1)
            mats = w.as_tuple()
            one_row = mats[3].shape[0] == 1  # the kernel writes after the head row itself (no full-length cat)
            y, final, stats = run_state_space(
                mats, m.theta, s[:, 1:], x0, nl, sample_rate=self.sample_rate,
                v_init=v_op.detach(), sample_offset=1, module=self.kernel(), head=y0 if one_row else None,
            )
            y = first_output(y) if one_row else torch.cat([y0, first_output(y)], dim=1)
        else:
            y, final, stats = run_state_space(
                w.as_tuple(), m.theta, s, state.q, nl, sample_rate=self.sample_rate,
                v_init=state.v, sample_offset=state.samples, module=self.kernel(),
            )
            y = first_output(y)
        record_newton_stats(diag, stats)
        self.diagnostics = diag
        done = (0 if state is None else state.samples) + u.shape[1]
        return y, DKState(final["x"], final.get("v"), done)

    def kernel(self) -> ModuleType:
        """The compiled DK module the WDF runs on: with the explicit root for every diode or pair the
        bound allows (cost up to ``MAX_OMEGA_STEPS``; DK itself stops at ``DK_MAX_OMEGA``)."""
        nl = self.topology.nonlinearity
        if nl.nb_source not in _KERNELS:
            _KERNELS[nl.nb_source] = step_module(nl.nb_source, dk_step(nl, MAX_OMEGA_STEPS))
        return _KERNELS[nl.nb_source]

    def root_path(self) -> tuple[str, Any]:
        """How the root is solved now: ('linear', 0), ('omega', (cost, True)) or ('newton', 0).

        'omega': the core's explicit root (one port, at most one plain diode each way, no charge,
        an error bound below ``OMEGA_TOL``; :func:`circuitsim.kernels.statespace.explicit_plan`):
        ``cost`` is one Wright-omega evaluation plus ``cost - 1`` division-free chord corrections.
        """
        nl = self.topology.nonlinearity
        if nl.n_ports == 0:
            return ("linear", 0)
        m, _, w = self.wdf()
        steps = explicit_plan(nl, w.K.detach().numpy(), m.theta.detach().numpy(), MAX_OMEGA_STEPS)
        return ("omega", steps) if steps is not None else ("newton", 0)

    # ------------------------------------------------------------------ describe
    def describe(self) -> str:
        """The adaptor tree as text: each adaptor's kind, children, elements and port resistances."""
        with torch.no_grad():
            ad = self.adapted()
        tree = self.tree
        lines: list[str] = []

        def ohms(item: Leaf | Adaptor) -> str:
            r = ad.R.get(id(item))
            return "" if r is None else f"R={float(r.detach()):.6g} ohm"

        def pair(nodes: tuple[int, int]) -> str:
            return f"({tree.node(nodes[0])}, {tree.node(nodes[1])})"

        def visit(item: Leaf | Adaptor, sign: int, depth: int) -> None:
            pad = "  " * depth
            flip = "" if sign > 0 else " [reversed]"
            if isinstance(item, Leaf):
                kind = {"R": "resistor", "C": "capacitor", "L": "inductor", "V": "voltage source"}[item.kind]
                lines.append(f"{pad}{item.name}: {kind} {pair(item.nodes)} {ohms(item)}{flip}".rstrip())
                return
            if item.kind == "rtype":
                inside = ", ".join(el.name for el in item.inside)
                inside += (", " if inside and item.chains else "") + ", ".join(
                    "+".join(lf.name for lf, _ in ch) for ch in item.chains)
                lines.append(f"{pad}R-type adaptor #{item.index}: {len(item.children)} child ports"
                             f"{' + up port ' + pair(item.up) if item.up else ''}"
                             f"{' (inside: ' + inside + ')' if inside else ''} {ohms(item)}{flip}".rstrip())
                for (c, s), pp in zip(item.children, item.ports):
                    lines.append(f"{pad}  port {pair(pp)}:")
                    visit(c, s, depth + 2)
                return
            kinds = sorted(c.kind for c, _ in item.children if isinstance(c, Leaf))
            if item.kind == "series" and len(item.children) == 2 and kinds == ["R", "V"]:
                (v, sv), (r, _) = sorted(item.children, key=lambda cs: cs[0].kind != "V")
                lines.append(f"{pad}{v.name}+{r.name}: resistive voltage source (series {v.name}, {r.name}) "
                             f"{ohms(item)}{flip}")
                return
            names = ", ".join(_elements(item))
            lines.append(f"{pad}{item.kind} adaptor #{item.index} [{names}] {ohms(item)}{flip}".rstrip())
            for c, s in item.children:
                visit(c, s, depth + 1)

        root = tree.root
        if root.kind == "nonlinear":
            solver = self.root_solver()
            lines.append(f"root: nonlinear one-port {pair(root.nodes)}: {', '.join(root.devices)} ({solver}), "
                         f"port R={float(ad.root_R.detach()):.6g} ohm")
        elif root.kind == "source":
            lines.append(f"root: ideal voltage source {'+'.join(lf.name for lf, _ in root.chain)} "
                         f"{pair(root.nodes)}, port R={float(ad.root_R.detach()):.6g} ohm")
        else:
            n = self.topology.nonlinearity.n_ports
            what = f"Newton on {n} device port voltages" if n else "linear"
            devs = f", devices: {', '.join(root.devices)}" if root.devices else ""
            lines.append(f"root: R-type adaptor ({what}{devs})")
        if root.child is not None:
            visit(root.child[0], root.child[1], 1)
        else:
            jn = root.junction
            inside = [el.name for el in jn.inside] + ["+".join(lf.name for lf, _ in ch) for ch in jn.chains]
            if inside:
                lines.append(f"  inside: {', '.join(inside)}")
            for (c, s), pp in zip(jn.children, jn.ports):
                lines.append(f"  port {pair(pp)}:")
                visit(c, s, 2)
        lay = self.layout
        lines.append(f"states: {lay.n_wave} reactive waves + {len(lay.charges)} charge histories; "
                     f"device ports: {self.topology.nonlinearity.n_ports}; sources: {lay.nu}")
        return "\n".join(lines)

    def root_solver(self) -> str:
        """How the root is solved, in words (describe)."""
        kind, steps = self.root_path()
        if kind == "omega":
            k = steps[0] - 1
            how = f"1 evaluation + {k} chord correction{'s' if k != 1 else ''}" if k else "1 evaluation"
            return f"explicit Wright omega, {how} per sample, no Newton iteration"
        return "Newton on the compiled core"


def _elements(a: Adaptor) -> list[str]:
    out: list[str] = []
    for c, _ in a.children:
        out += [c.name] if isinstance(c, Leaf) else _elements(c) if c.kind != "rtype" else [f"R-type #{c.index}"]
    return out


__all__ = ["WDFModule"]
