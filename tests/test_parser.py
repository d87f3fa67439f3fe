"""Netlist parser: every construct (table driven), real-world snippets, includes, expressions
(checked against ngspice itself and against sympy/torch), and the value writer.

Expected values are the SPICE meaning of the text, written out by hand (``10k`` is 1e4,
``1F`` is a femtofarad, ``2^3^2`` is 64 in ngspice, ...), never values printed by the parser.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sympy
import torch

from circuitsim.netlist import (
    MATH_OPS,
    TORCH_OPS,
    NetlistError,
    NetlistWarning,
    evaluate,
    format_value,
    free_names,
    parse_expr,
    parse_file,
    parse_number,
    parse_string,
    rewrite_values,
    to_sympy,
)
from circuitsim.netlist.ast import BranchI, Cond, Element, Expr, Name, Netlist, NodeV, Num, Scope, Span
from circuitsim.netlist.expr import walk

DATA = Path(__file__).parent / "data" / "netlists"


# ---------------------------------------------------------------- helpers


def parse(text: str) -> Netlist:
    return parse_string(text, "t.cir")


def find(scope: Scope, name: str) -> Element:
    matches = [e for e in scope.elements if e.name == name]
    assert len(matches) == 1, f"{name} not found once in {[e.name for e in scope.elements]}"
    return matches[0]


def num(expr: Expr | None) -> float:
    assert isinstance(expr, Num), expr
    return expr.value


def val(scope: Scope, name: str) -> float:
    return num(find(scope, name).value)


def ev(expr: Expr | None, env: dict | None = None) -> float:
    assert expr is not None
    return evaluate(expr, env or {}, MATH_OPS)


def params_env(scope: Scope) -> dict[str, float]:
    """Evaluate a scope's .params in the order the parser left them (each after what it uses)."""
    env: dict[str, float] = {}
    for p in scope.params:
        env[p.name] = evaluate(p.expr, env, MATH_OPS)
    return env


def span_text(net: Netlist, span: Span) -> str:
    return net.sources[span.file][span.line - 1].rstrip("\r\n")[span.start : span.end]


def all_exprs(scope: Scope):
    for p in scope.params:
        yield p.expr
    for m in scope.models.values():
        yield from m.params.values()
    for el in scope.elements:
        if el.value is not None:
            yield el.value
        yield from el.params.values()
        if el.source is not None:
            yield from (e for e in (el.source.dc, *(el.source.ac or ()), *el.source.args) if e is not None)
    for sub in scope.subckts.values():
        yield from sub.defaults.values()
        yield from all_exprs(sub)


# ---------------------------------------------------------------- the construct table


@dataclass
class Case:
    id: str
    text: str
    checks: list[tuple[Callable[[Netlist], Any], Any]]


KOREN_NGSPICE = """\
.subckt 12AX7 P G K params: mu=100 ex=1.4 kg1=1060 kp=600 kvb=300 rgi=2000
Be1 e1 0 V={V(P,K)/kp*ln(1+exp(kp*(1/mu+V(G,K)/sqrt(kvb+V(P,K)*V(P,K)))))}
Re1 e1 0 1G
Bp P K I={2*pwr(uramp(V(e1)),ex)/kg1}
Cgk G K 1.6p
Cgp G P 1.7p
Cpk P K 0.46p
.ends
"""

KOREN_PSPICE = """\
.SUBCKT 12AX7P P G K PARAMS: MU=100 EX=1.4 KG1=1060 KP=600 KVB=300
E1 7 0 VALUE={V(P,K)/KP*LOG(1+EXP(KP*(1/MU+V(G,K)/SQRT(KVB+V(P,K)*V(P,K)))))}
G1 P K VALUE={(PWR(V(7),EX)+PWRS(V(7),EX))/KG1}
R1 7 0 1G
.ENDS
"""

Q2N3904 = """\
.model 2N3904 NPN(Is=6.734f Xti=3 Eg=1.11 Vaf=74.03 Bf=416.4 Ne=1.259
+ Ise=6.734f Ikf=66.78m Xtb=1.5 Br=.7371 Nc=2 Isc=0 Ikr=0 Rc=1
+ Cjc=3.638p Mjc=.3085 Vjc=.75 Fc=.5 Cje=4.493p Mje=.2593 Vje=.75
+ Tr=239.5n Tf=301.2p Itf=.4 Vtf=4 Xtf=2 Rb=10)
"""

D1N914 = ".model D1N914 D(Is=2.52n Rs=.568 N=1.752 Cjo=4p M=.4 tt=20n)\n"


def koren_plate_current(vp: float, vg: float, mu=100.0, ex=1.4, kg1=1060.0, kp=600.0, kvb=300.0) -> float:
    """Koren (1996) triode: E1 = Vpk/kp ln(1 + exp(kp (1/mu + Vgk/sqrt(kvb + Vpk^2)))), Ip = 2 E1^ex / kg1."""
    e1 = vp / kp * math.log(1 + math.exp(kp * (1 / mu + vg / math.sqrt(kvb + vp * vp))))
    return 2 * max(e1, 0.0) ** ex / kg1


CASES = [
    Case(
        "title_and_comments",
        "* the title line can look like a comment\n"
        "R1 a b 1k ; semicolon comment\n"
        "R2 b c 2k $ dollar comment with R9 x y 1\n"
        "R3 c d 3k // slash comment\n"
        "* a comment line R8 x y 1\n"
        "; a semicolon line R7 x y 1\n"
        "R4 a$b 0 4k\n"
        "   R5 e 0 5k\n"
        "\n"
        "\t\n",
        [
            (lambda n: n.title, "* the title line can look like a comment"),
            (lambda n: [e.name for e in n.elements], ["R1", "R2", "R3", "R4", "R5"]),
            (lambda n: [val(n, f"R{i}") for i in range(1, 6)], [1e3, 2e3, 3e3, 4e3, 5e3]),
            (lambda n: find(n, "R4").nodes, ["a$b", "0"]),
            (lambda n: [e.loc.line for e in n.elements], [2, 3, 4, 7, 8]),
        ],
    ),
    Case(
        "continuations",
        "t\nR1 a\n* a comment between the pieces\n+ b\n\n+ 10k m=2\n.model Q NPN(IS=1f\n+ BF=200)\n",
        [
            (lambda n: find(n, "R1").loc.line, 2),
            (lambda n: find(n, "R1").nodes, ["a", "b"]),
            (lambda n: val(n, "R1"), 1e4),
            (lambda n: find(n, "R1").value.span, Span("t.cir", 6, 2, 5)),
            (lambda n: num(find(n, "R1").params["M"]), 2.0),
            (lambda n: n.models["Q"].loc.line, 7),
            (lambda n: n.models["Q"].params["BF"].span, Span("t.cir", 8, 5, 8)),
        ],
    ),
    Case(
        "case_insensitive",
        "t\nr1 A B 1K\n.MODEL dmod d (is=1n)\nd1 A K DMOD\n.PaRaM Gain=2\ne1 OUT 0 A 0 {GAIN}\n.END\n",
        [
            (lambda n: [e.name for e in n.elements], ["R1", "D1", "E1"]),
            (lambda n: find(n, "R1").nodes, ["a", "b"]),
            (lambda n: val(n, "R1"), 1e3),
            (lambda n: (n.models["DMOD"].type, list(n.models["DMOD"].params)), ("D", ["IS"])),
            (lambda n: find(n, "D1").model, "DMOD"),
            (lambda n: [p.name for p in n.params], ["gain"]),
            (lambda n: find(n, "E1").value, Name("gain")),
        ],
    ),
    Case(
        "end_stops_parsing",
        "t\nR1 a b 1k\n.end\nthis line would be an error\nF1 a b V1 2\n",
        [(lambda n: [e.name for e in n.elements], ["R1"])],
    ),
    Case(
        "numbers",
        "t\nR1 a 0 10k\nR2 a 0 2.2kOhm\nC3 a 0 10uF\nC4 a 0 1N\nR5 a 0 1meg\nR6 a 0 1MEG\nR7 a 0 1mil\n"
        "C8 a 0 4.7µ\nC9 a 0 4.7μF\nC10 a 0 1e-9\nR11 a 0 1.5e3\nR12 a 0 .5\nR13 a 0 +5\nR14 a 0 -5\n"
        "C15 a 0 1F\nC16 a 0 100pF\nR17 a 0 1.5E3k\nR18 a 0 2.5T\nR19 a 0 3G\nL20 a 0 10mH\nR21 a 0 1M\n"
        "R22 a 0 7\nR23 a 0 0.25e+2\n",
        [
            (
                lambda n: [val(n, e.name) for e in n.elements],
                pytest.approx(
                    [
                        1e4,
                        2.2e3,
                        1e-5,
                        1e-9,
                        1e6,
                        1e6,
                        25.4e-6,
                        4.7e-6,
                        4.7e-6,
                        1e-9,
                        1.5e3,
                        0.5,
                        5.0,
                        -5.0,
                        1e-15,
                        1e-10,
                        1.5e6,
                        2.5e12,
                        3e9,
                        1e-2,
                        1e-3,
                        7.0,
                        25.0,
                    ],
                    rel=1e-15,
                ),
            ),
        ],
    ),
    Case(
        "rcl_forms",
        "t\n.param k=5 rval=2k\nR1 a b {2*k}\nR2 a b r=10k\nR3 a b value=3k\nR4 a b resistance = 4k\n"
        "R5 a b 1k m=2 tc1=0.001 tc2=1e-6\nC1 a b 1u ic=2\nL1 a b 10m ic=1m\nR6 a b rval\nR7 a b 'k*3'\n"
        "C2 a b capacitance=2n\nL2 a b l=3u\n",
        [
            (lambda n: ev(find(n, "R1").value, params_env(n)), 10.0),
            (lambda n: [val(n, x) for x in ("R2", "R3", "R4")], [1e4, 3e3, 4e3]),
            (lambda n: find(n, "R2").params, {}),
            (
                lambda n: {k: num(v) for k, v in find(n, "R5").params.items()},
                {"M": 2.0, "TC1": 1e-3, "TC2": 1e-6},
            ),
            (lambda n: (val(n, "C1"), num(find(n, "C1").params["IC"])), (1e-6, 2.0)),
            (lambda n: (val(n, "L1"), num(find(n, "L1").params["IC"])), (1e-2, 1e-3)),
            (lambda n: find(n, "R6").value, Name("rval")),
            (lambda n: ev(find(n, "R7").value, params_env(n)), 15.0),
            (lambda n: (val(n, "C2"), val(n, "L2")), (2e-9, 3e-6)),
        ],
    ),
    Case(
        "independent_sources",
        "t\n.param amp=1m\nV1 a 0 DC 5\nV2 b 0 3.3\nV3 c 0 DC 0 AC 1 90\nV4 d 0 AC 2\nV5 e 0 SIN(0 1 1k)\n"
        "V6 f 0 SIN(0 1 1k 1m 10 45)\nV7 g 0 PWL(0,0 1m,1 2m,0)\nV8 h 0 PULSE 0 5 0 1n 1n 5u 10u\n"
        "V9 i 0 EXP(0 1 1u 1u 2u 2u)\nV10 j 0 SINE(0 1 440) Rser=10\nI1 0 k DC 1m\nI2 0 l {2*amp}\n"
        "V11 m 0 dc=1.5\nV12 n 0 0 AC 1 SIN(0 0.1 1k)\nV13 o 0 sin (0, 2, 50)\nV14 p 0\n",
        [
            (lambda n: num(find(n, "V1").source.dc), 5.0),
            (lambda n: (num(find(n, "V2").source.dc), find(n, "V2").source.waveform), (3.3, None)),
            (lambda n: [num(x) for x in find(n, "V3").source.ac], [1.0, 90.0]),
            (lambda n: [num(x) for x in find(n, "V4").source.ac], [2.0, 0.0]),
            (lambda n: find(n, "V4").source.dc, None),
            (
                lambda n: (find(n, "V5").source.waveform, [num(a) for a in find(n, "V5").source.args]),
                ("SIN", [0, 1, 1e3]),
            ),
            (lambda n: [num(a) for a in find(n, "V6").source.args], [0, 1, 1e3, 1e-3, 10, 45]),
            (
                lambda n: (find(n, "V7").source.waveform, [num(a) for a in find(n, "V7").source.args]),
                ("PWL", [0, 0, 1e-3, 1, 2e-3, 0]),
            ),
            (
                lambda n: (find(n, "V8").source.waveform, [num(a) for a in find(n, "V8").source.args]),
                ("PULSE", [0, 5, 0, 1e-9, 1e-9, 5e-6, 1e-5]),
            ),
            (lambda n: find(n, "V9").source.waveform, "EXP"),
            (lambda n: (find(n, "V10").source.waveform, num(find(n, "V10").params["RSER"])), ("SIN", 10.0)),
            (
                lambda n: (find(n, "I1").kind, find(n, "I1").nodes, num(find(n, "I1").source.dc)),
                ("I", ["0", "k"], 1e-3),
            ),
            (lambda n: ev(find(n, "I2").source.dc, params_env(n)), 2e-3),
            (lambda n: num(find(n, "V11").source.dc), 1.5),
            (lambda n: (num(find(n, "V12").source.dc), find(n, "V12").source.waveform), (0.0, "SIN")),
            (lambda n: [num(a) for a in find(n, "V13").source.args], [0, 2, 50]),
            (lambda n: (find(n, "V14").source.dc, find(n, "V14").value), (None, None)),
        ],
    ),
    Case(
        "controlled_sources",
        "t\nV1 c 0 1\nE1 o 0 c 0 10\nG1 o1 0 c 0 1m\nE2 o2 0 VALUE={V(c)*2}\nE3 o3 0 VALUE = { V(c,0) + 1 }\n"
        "E4 o4 0 value='V(c)-1'\nG2 o5 0 cur={V(c)/1k}\nE5 o6 0 vol='2*V(c)'\nG3 o7 0 VALUE={I(V1)*2}\n"
        "E6 o8 0 VALUE=V(c)*3\n",
        [
            (lambda n: (find(n, "E1").nodes, val(n, "E1")), (["o", "0", "c", "0"], 10.0)),
            (lambda n: (find(n, "G1").nodes, val(n, "G1")), (["o1", "0", "c", "0"], 1e-3)),
            (lambda n: (find(n, "E2").nodes, find(n, "E2").value), (["o2", "0"], None)),
            (lambda n: ev(find(n, "E2").params["VALUE"], {NodeV("c"): 1.5}), 3.0),
            (lambda n: find(n, "E3").params["VALUE"].left, NodeV("c")),
            (lambda n: ev(find(n, "E3").params["VALUE"], {NodeV("c"): 1.5}), 2.5),
            (lambda n: ev(find(n, "E4").params["VALUE"], {NodeV("c"): 1.5}), 0.5),
            (lambda n: ev(find(n, "G2").params["VALUE"], {NodeV("c"): 1.5}), 1.5e-3),
            (lambda n: ev(find(n, "E5").params["VALUE"], {NodeV("c"): 1.5}), 3.0),
            (lambda n: ev(find(n, "G3").params["VALUE"], {BranchI("V1"): 0.25}), 0.5),
            (lambda n: ev(find(n, "E6").params["VALUE"], {("V", "c", None): 2.0}), 6.0),
        ],
    ),
    Case(
        "behavioural_sources",
        "t\nB1 a 0 V=V(b)*2\nB2 a2 0 I={V(b)/1k}\nB3 a3 0 V = V(b) + V(c, d) * 3\n"
        "B4 a4 0 I='pwr(V(b), 1.5)' tc1=0.01\nB5 a5 0 v=V(net-1, GND)\n",
        [
            (lambda n: (find(n, "B1").nodes, list(find(n, "B1").params)), (["a", "0"], ["V"])),
            (lambda n: ev(find(n, "B1").params["V"], {NodeV("b"): 1.25}), 2.5),
            (lambda n: ev(find(n, "B2").params["I"], {NodeV("b"): 2.0}), 2e-3),
            (lambda n: ev(find(n, "B3").params["V"], {NodeV("b"): 1.0, NodeV("c", "d"): 2.0}), 7.0),
            (lambda n: ev(find(n, "B4").params["I"], {NodeV("b"): -4.0}), -8.0),
            (lambda n: num(find(n, "B4").params["TC1"]), 0.01),
            (lambda n: find(n, "B5").params["V"], NodeV("net-1")),
        ],
    ),
    Case(
        "diodes_and_bjts",
        "t\nD1 a k DMOD\nD2 a k DMOD 2\nD3 a k DMOD area=3 m=2\nQ1 c b e QMOD\nQ2 c b e s QMOD\n"
        "Q3 c b e QMOD 1.5\nQ4 c b e 0 2N3904 2\nQ5 c b e 2N3904\nQ6 c b e QMOD {2*1}\n"
        ".model DMOD D\n.model QMOD NPN BF=100 IS=1f\n.model 2N3904 PNP(BF=300)\n",
        [
            (
                lambda n: (find(n, "D1").nodes, find(n, "D1").model, find(n, "D1").params),
                (["a", "k"], "DMOD", {}),
            ),
            (lambda n: num(find(n, "D2").params["AREA"]), 2.0),
            (lambda n: {k: num(v) for k, v in find(n, "D3").params.items()}, {"AREA": 3.0, "M": 2.0}),
            (lambda n: (find(n, "Q1").nodes, find(n, "Q1").model), (["c", "b", "e"], "QMOD")),
            (lambda n: (find(n, "Q2").nodes, find(n, "Q2").model), (["c", "b", "e", "s"], "QMOD")),
            (lambda n: (find(n, "Q3").nodes, num(find(n, "Q3").params["AREA"])), (["c", "b", "e"], 1.5)),
            (
                lambda n: (find(n, "Q4").nodes, find(n, "Q4").model, num(find(n, "Q4").params["AREA"])),
                (["c", "b", "e", "0"], "2N3904", 2.0),
            ),
            (lambda n: (find(n, "Q5").nodes, find(n, "Q5").model), (["c", "b", "e"], "2N3904")),
            (lambda n: (find(n, "Q6").nodes, ev(find(n, "Q6").params["AREA"])), (["c", "b", "e"], 2.0)),
            (lambda n: (n.models["DMOD"].type, n.models["DMOD"].params), ("D", {})),
            (lambda n: (n.models["2N3904"].type, num(n.models["2N3904"].params["BF"])), ("PNP", 300.0)),
            (lambda n: {k: num(v) for k, v in n.models["QMOD"].params.items()}, {"BF": 100.0, "IS": 1e-15}),
        ],
    ),
    Case(
        "linear_poly_sources",
        "t\nV1 x 0 1\nVB y 0 0\nEGND 99 0 POLY(2) (3,0) (4,0) 0 .5 .5\nGP 1 2 poly(1) 3 4 1m 2m\n"
        "FB 7 99 POLY(2) V1 VB 0 4.7E6 -5E6\nHP 5 0 POLY(1) V1 0 1k\n",
        [
            (lambda n: (find(n, "EGND").kind, find(n, "EGND").nodes), ("E", ["99", "0"])),
            (lambda n: sorted((e.pos, e.neg) for e in walk(find(n, "EGND").params["VALUE"]) if isinstance(e, NodeV)),
             [("3", None), ("4", None)]),
            (lambda n: sorted(e.source for e in walk(find(n, "FB").params["VALUE"]) if isinstance(e, BranchI)),
             ["V1", "VB"]),
            (lambda n: sorted(e.value for e in walk(find(n, "FB").params["VALUE"]) if isinstance(e, Num)),
             [-5e6, 0.0, 4.7e6]),
            (lambda n: (find(n, "GP").kind, find(n, "FB").kind, find(n, "HP").kind), ("G", "G", "E")),
        ],
    ),
    Case(
        "jfets_and_mosfets",
        "t\nJ1 d g s JMOD\nJ2 d g s JMOD 1.5 m=2\nJ3 d g s JMOD area={3}\nM1 d g s b NM W=2u L=1u\n"
        "M2 d g s s PM l=2u w=50u m=3 ad=1p as=1p pd=4u ps=4u nrd=1 nrs=1\n"
        ".model JMOD NJF(VTO=-0.8 BETA=1.3m)\n.model JP PJF\n.model NM NMOS(LEVEL=1 VTO=1.77 KP=0.15)\n"
        ".model PM PMOS\n",
        [
            (lambda n: (find(n, "J1").nodes, find(n, "J1").model, find(n, "J1").params), (["d", "g", "s"], "JMOD", {})),
            (lambda n: {k: num(v) for k, v in find(n, "J2").params.items()}, {"AREA": 1.5, "M": 2.0}),
            (lambda n: ev(find(n, "J3").params["AREA"]), 3.0),
            (lambda n: (find(n, "M1").nodes, find(n, "M1").model), (["d", "g", "s", "b"], "NM")),
            (lambda n: {k: num(v) for k, v in find(n, "M1").params.items()}, {"W": 2e-6, "L": 1e-6}),
            (lambda n: sorted(find(n, "M2").params), ["AD", "AS", "L", "M", "NRD", "NRS", "PD", "PS", "W"]),
            (lambda n: [n.models[k].type for k in ("JMOD", "JP", "NM", "PM")], ["NJF", "PJF", "NMOS", "PMOS"]),
            (lambda n: num(n.models["NM"].params["KP"]), 0.15),
        ],
    ),
    Case(
        "subcircuits",
        "t\n.subckt A in out params: g=2 r={2*g}\nR1 in out {r}\n.ends A\n"
        ".subckt B in out PARAMS: k=1\n.subckt inner x y\nR1 x y 1k\n.ends inner\n"
        ".param local={k*3}\n.model DL D(IS={k*1n})\nXi in out inner\nD1 in out DL\n.ends\n"
        ".subckt C a b q=5\nR1 a b {q}\n.ends\n.subckt D a params s=1 t=2\n.ends\n"
        "X1 1 2 A g=3\nX2 3 4 B params: k=2\nX3 5 6 C\nX4 5 gnd A params:g=7 r={1+1}\n",
        [
            (lambda n: sorted(n.subckts), ["A", "B", "C", "D"]),
            (lambda n: (n.subckts["A"].ports, list(n.subckts["A"].defaults)), (["in", "out"], ["g", "r"])),
            (lambda n: ev(n.subckts["A"].defaults["r"], {"g": 2.0}), 4.0),
            (lambda n: find(n.subckts["A"], "R1").value, Name("r")),
            (lambda n: list(n.subckts["B"].subckts), ["INNER"]),
            (lambda n: [e.name for e in n.subckts["B"].elements], ["XI", "D1"]),
            (lambda n: [p.name for p in n.subckts["B"].params], ["local"]),
            (lambda n: list(n.subckts["B"].models), ["DL"]),
            (lambda n: ev(n.subckts["B"].models["DL"].params["IS"], {"k": 2.0}), 2e-9),
            (lambda n: n.subckts["B"].loc.line, 5),
            (lambda n: num(n.subckts["C"].defaults["q"]), 5.0),
            (lambda n: (n.subckts["D"].ports, list(n.subckts["D"].defaults)), (["a"], ["s", "t"])),
            (
                lambda n: (find(n, "X1").nodes, find(n, "X1").model, num(find(n, "X1").params["g"])),
                (["1", "2"], "A", 3.0),
            ),
            (lambda n: num(find(n, "X2").params["k"]), 2.0),
            (lambda n: (find(n, "X3").model, find(n, "X3").params), ("C", {})),
            (
                lambda n: (
                    find(n, "X4").nodes,
                    num(find(n, "X4").params["g"]),
                    ev(find(n, "X4").params["r"]),
                ),
                (["5", "0"], 7.0, 2.0),
            ),
        ],
    ),
    Case(
        "params",
        "t\n.param a=1 b={a*2} c = 'a+b'\n.param d = a + 3 e=2*d, f={e}\n.param late={early*2}\n"
        ".param early=3\n"
        ".param g = -2 h=-a\nR1 x 0 {late}\n",
        [
            (
                lambda n: params_env(n),
                {"a": 1, "b": 2, "c": 3, "d": 4, "e": 8, "f": 8, "early": 3, "late": 6, "g": -2, "h": -1},
            ),
            (
                lambda n: (
                    [p.name for p in n.params].index("early") < [p.name for p in n.params].index("late")
                ),
                True,
            ),
            (lambda n: [p.loc.line for p in n.params if p.name in ("a", "e", "late")], [2, 3, 4]),
            (lambda n: next(p for p in n.params if p.name == "g").expr.span, Span("t.cir", 6, 11, 13)),
        ],
    ),
    Case(
        "func",
        "t\nR1 a b {quad(3)}\n.func double(x) = {2*x}\n.func quad(x) {double(double(x))}\n"
        ".func hyp(x, y) = 'sqrt(x*x + y*y)'\nR2 a b {hyp(3, 4)*1k}\n",
        [
            (lambda n: ev(find(n, "R1").value), 12.0),
            (lambda n: ev(find(n, "R2").value), 5000.0),
            (lambda n: any(isinstance(e, Name) for e in walk(find(n, "R1").value)), False),
        ],
    ),
    Case(
        "global_and_ground",
        "t\n.global vcc VDD gnd\nR1 vcc GND 1k\nB1 a gnd V={V(x, GND) + V(0, y)}\nR2 a 0 1\n",
        [
            (lambda n: n.globals, ["vcc", "vdd"]),
            (lambda n: find(n, "R1").nodes, ["vcc", "0"]),
            (lambda n: find(n, "B1").nodes, ["a", "0"]),
            (
                lambda n: [e for e in walk(find(n, "B1").params["V"]) if isinstance(e, NodeV)],
                [NodeV("x"), NodeV("0", "y")],
            ),
        ],
    ),
    Case(
        "controls_kept_verbatim",
        "t\nR1 a 0 1k\n.tran 1u 1m\n.op\n.options reltol=1e-6\n+ abstol=1e-15\n.meas tran vmax max v(a)\n"
        ".print tran v(a)\n.control\nrun\n* a comment inside\nplot v(a) ; with a comment\n.endc\n.backanno\n"
        ".temp 27\n.ic v(a)=1\n.nodeset v(a)=2\n.save v(a)\n.ac dec 10 1 100k\n.dc V1 0 1 0.1\n",
        [
            (
                lambda n: [c.text for c in n.controls],
                [
                    ".tran 1u 1m",
                    ".op",
                    ".options reltol=1e-6 abstol=1e-15",
                    ".meas tran vmax max v(a)",
                    ".print tran v(a)",
                    ".control\nrun\n* a comment inside\nplot v(a) ; with a comment\n.endc",
                    ".backanno",
                    ".temp 27",
                    ".ic v(a)=1",
                    ".nodeset v(a)=2",
                    ".save v(a)",
                    ".ac dec 10 1 100k",
                    ".dc V1 0 1 0.1",
                ],
            ),
            (lambda n: [c.loc.line for c in n.controls], [3, 4, 5, 7, 8, 9, 14, 15, 16, 17, 18, 19, 20]),
            (lambda n: [e.name for e in n.elements], ["R1"]),
        ],
    ),
    Case(
        "ltspice_paste",
        "t\n; LTspice comment\nC1 a 0 4.7µ Rser=0.1\nV1 in 0 SINE(0 1 1k) Rser=1\n"
        "E1 o 0 VALUE={PWRS(V(a),2)}\n"
        ".model DL D(Is=1n mfg=OnSemi type=silicon)\n.backanno\nD1 a 0 DL\n",
        [
            (lambda n: (val(n, "C1"), num(find(n, "C1").params["RSER"])), (4.7e-6, 0.1)),
            (lambda n: ev(find(n, "E1").params["VALUE"], {NodeV("a"): -3.0}), -9.0),
            (lambda n: n.models["DL"].params["MFG"], Name("onsemi")),
            (lambda n: [c.text for c in n.controls], [".backanno"]),
        ],
    ),
    Case(
        "kicad_potentiometer",
        "KiCad export\n.title booster\nARV1 Net-_C1-Pad2_ /wiper GND __RV1\n"
        ".model __RV1 potentiometer( r=100k position=1 )\n"
        ".model __RV2 potentiometer( r=10k position=.25 log=true log_multiplier=2 )\n"
        "ARV2 a b c __RV2\nR1 /wiper GND 10k\n",
        [
            (lambda n: (find(n, "ARV1").kind, find(n, "ARV1").nodes), ("A", ["net-_c1-pad2_", "/wiper", "0"])),
            (lambda n: find(n, "ARV1").model, "__RV1"),
            (lambda n: (n.models["__RV1"].type, {k: num(v) for k, v in n.models["__RV1"].params.items()}),
             ("POTENTIOMETER", {"R": 1e5, "POSITION": 1.0})),
            (lambda n: n.models["__RV2"].params["LOG"], Name("true")),
            (lambda n: num(n.models["__RV2"].params["LOG_MULTIPLIER"]), 2.0),
            (lambda n: find(n, "R1").nodes, ["/wiper", "0"]),
        ],
    ),
    Case(
        "kicad_dc_in_parentheses",
        ".title KiCad schematic\nV1 Net-_R1-Pad1_ GND ( 9 )\nV2 b 0 dc(5)\nVDC1 c GND ( 1 ) AC 1\nR1 b 0 1k\n",
        [
            (lambda n: [num(e.source.dc) for e in n.elements if e.source], [9.0, 5.0, 1.0]),
            (lambda n: find(n, "V1").nodes, ["net-_r1-pad1_", "0"]),
            (lambda n: num(find(n, "VDC1").source.ac[0]), 1.0),
        ],
    ),
    Case(
        "current_controlled_sources",
        "t\nV1 a 0 1\nF1 b 0 V1 2.5\nH1 c GND V1 {2*1k}\nFm d 0 V1 3 m=2\n",
        [
            (lambda n: [(e.kind, e.nodes) for e in n.elements[1:]], [("F", ["b", "0"]), ("H", ["c", "0"]),
                                                                     ("F", ["d", "0"])]),
            (lambda n: (val(n, "F1"), find(n, "F1").params["CONTROL"]), (2.5, BranchI("V1"))),
            (lambda n: ev(find(n, "H1").value), 2000.0),
            (lambda n: num(find(n, "FM").params["M"]), 2.0),
        ],
    ),
    Case(
        "ltspice_export",
        "* C:\\Users\\me\\preamp.asc\nV1 N019 0 wavefile=di-cut.wav chan=0\nR1 N019 g 68k\n"
        "X1 p g k TriodeK MU=96.2 EX=1.4\n.SUBCKT TriodeK A G K\n"
        "G1 A K VALUE={0.5*(PWR(V(A,K),EX)+PWRS(V(A,K),EX))/MU}\n.ENDS\nC1 k 0 22µ\n.backanno\n",
        [
            (lambda n: (n.dialect, n.dialect_note), ("ltspice", "t.cir:2: reading as ltspice (detected from "
                                                     "'wavefile='; --dialect to override)")),
            (lambda n: (find(n, "V1").source.waveform, find(n, "V1").source.file), ("WAVEFILE", "di-cut.wav")),
            (lambda n: num(find(n, "V1").params["CHAN"]), 0.0),
            (lambda n: {k: num(v) for k, v in find(n, "X1").params.items()}, {"mu": 96.2, "ex": 1.4}),
            (lambda n: n.subckts["TRIODEK"].defaults, {}),
            # LTspice pwr(x, y) = |x|^y, pwrs the signed power: 0.5*(pwr+pwrs) is max(x, 0)^ex
            (lambda n: ev(find(n.subckts["TRIODEK"], "G1").params["VALUE"],
                          {"ex": 1.5, "mu": 1.0, NodeV("a", "k"): -4.0}), 0.0),
            (lambda n: ev(find(n.subckts["TRIODEK"], "G1").params["VALUE"],
                          {"ex": 1.5, "mu": 1.0, NodeV("a", "k"): 4.0}), 8.0),
            (lambda n: val(n, "C1"), 22e-6),
        ],
    ),
    Case(
        "pspice_macromodel",  # as ROHM's BA4558R macromodel writes it (tests/data/wild/BA4558R_Rev002.lib)
        "t\n.SUBCKT amp +IN -IN VCC VEE OUT\nR_R27 +IN n1 10 TC=0.001,0\nC_C3 n1 -IN 33.5p TC=0,0\n"
        "I_I5 VEE n2 DC 1uAdc\nQ_Q17 OUT n1 n2 QP3 38.7\n.model QP3 PNP(IS=1e-15 BF=100)\nR1 VCC OUT 1k\n.ENDS\n",
        [
            (lambda n: (n.dialect, n.dialect_note), ("pspice", "t.cir:3: reading as pspice (detected from "
                                                     "'TC=0.001,0' on R_R27; --dialect to override)")),
            (lambda n: n.subckts["AMP"].ports, ["+in", "-in", "vcc", "vee", "out"]),
            (lambda n: {k: num(v) for k, v in find(n.subckts["AMP"], "R_R27").params.items()},
             {"TC1": 1e-3, "TC2": 0.0}),
            (lambda n: {k: num(v) for k, v in find(n.subckts["AMP"], "C_C3").params.items()},
             {"TC1": 0.0, "TC2": 0.0}),
            (lambda n: num(find(n.subckts["AMP"], "I_I5").source.dc), 1e-6),
            (lambda n: (find(n.subckts["AMP"], "Q_Q17").model, num(find(n.subckts["AMP"], "Q_Q17").params["AREA"])),
             ("QP3", 38.7)),
            (lambda n: list(n.subckts["AMP"].models), ["QP3"]),
        ],
    ),
    Case(
        "vendor_model_card",
        "t\n.model 1N4148 D(Is=2.52n Rs=.568 N=1.752 Cjo=4p M=.4 tt=20n Iave=200m Vpk=75 mfg=\"OnSemi\" "
        "type=\"silicon\")\n.model 2N3904 NPN(IS=1E-14 VAF=100 Vceo=40 Icrating=200m mfg=\"NXP\")\n",
        [
            (lambda n: {k: num(v) for k, v in n.models["1N4148"].params.items()},
             {"IS": 2.52e-9, "RS": 0.568, "N": 1.752, "CJO": 4e-12, "M": 0.4, "TT": 20e-9, "IAVE": 0.2, "VPK": 75.0}),
            (lambda n: n.models["1N4148"].strings, {"MFG": "OnSemi", "TYPE": "silicon"}),
            (lambda n: (num(n.models["2N3904"].params["ICRATING"]), n.models["2N3904"].strings), (0.2, {"MFG": "NXP"})),
        ],
    ),
    Case(
        "expression_across_continuation",
        "t\nB1 x 0 V={V(b)*\n+ 2.5}\nE1 o+ o- c+ c- 2\n"
        ".subckt A a b params: r={2*g} g=2\nR1 a b {r}\n.ends\n",
        [
            (lambda n: ev(find(n, "B1").params["V"], {NodeV("b"): 2.0}), 5.0),
            (lambda n: find(n, "B1").params["V"].right.span, Span("t.cir", 3, 2, 5)),
            (lambda n: (find(n, "E1").nodes, val(n, "E1")), (["o+", "o-", "c+", "c-"], 2.0)),
            (lambda n: list(n.subckts["A"].defaults), ["g", "r"]),  # each default after what it uses
        ],
    ),
    Case(
        "title_command",
        "first line\n.title Fuzz Face\nR1 a 0 1\n",
        [(lambda n: n.title, "Fuzz Face")],
    ),
    Case(
        "koren_ngspice",
        "triode\n" + KOREN_NGSPICE + "XV1 p g k 12AX7\n",
        [
            (lambda n: n.subckts["12AX7"].ports, ["p", "g", "k"]),
            (
                lambda n: {k: num(v) for k, v in n.subckts["12AX7"].defaults.items()},
                {"mu": 100, "ex": 1.4, "kg1": 1060, "kp": 600, "kvb": 300, "rgi": 2000},
            ),
            (
                lambda n: [e.name for e in n.subckts["12AX7"].elements],
                ["BE1", "RE1", "BP", "CGK", "CGP", "CPK"],
            ),
            (
                lambda n: [val(n.subckts["12AX7"], x) for x in ("RE1", "CGK", "CGP", "CPK")],
                [1e9, 1.6e-12, 1.7e-12, 0.46e-12],
            ),
            (lambda n: free_names(find(n.subckts["12AX7"], "BE1").params["V"]), {"kp", "mu", "kvb"}),
        ],
    ),
    Case(
        "koren_pspice",
        "triode\n" + KOREN_PSPICE,
        [
            (lambda n: list(n.subckts), ["12AX7P"]),
            (lambda n: list(n.subckts["12AX7P"].defaults), ["mu", "ex", "kg1", "kp", "kvb"]),
            (
                lambda n: (
                    find(n.subckts["12AX7P"], "E1").nodes,
                    list(find(n.subckts["12AX7P"], "E1").params),
                ),
                (["7", "0"], ["VALUE"]),
            ),
            (lambda n: free_names(find(n.subckts["12AX7P"], "G1").params["VALUE"]), {"ex", "kg1"}),
        ],
    ),
    Case(
        "vendor_2n3904",
        "bjt\n" + Q2N3904,
        [
            (lambda n: n.models["2N3904"].type, "NPN"),
            (
                lambda n: {k: num(v) for k, v in n.models["2N3904"].params.items()},
                pytest.approx(
                    {
                        "IS": 6.734e-15,
                        "XTI": 3,
                        "EG": 1.11,
                        "VAF": 74.03,
                        "BF": 416.4,
                        "NE": 1.259,
                        "ISE": 6.734e-15,
                        "IKF": 66.78e-3,
                        "XTB": 1.5,
                        "BR": 0.7371,
                        "NC": 2,
                        "ISC": 0,
                        "IKR": 0,
                        "RC": 1,
                        "CJC": 3.638e-12,
                        "MJC": 0.3085,
                        "VJC": 0.75,
                        "FC": 0.5,
                        "CJE": 4.493e-12,
                        "MJE": 0.2593,
                        "VJE": 0.75,
                        "TR": 239.5e-9,
                        "TF": 301.2e-12,
                        "ITF": 0.4,
                        "VTF": 4,
                        "XTF": 2,
                        "RB": 10,
                    },
                    rel=1e-15,
                ),
            ),
            (lambda n: n.models["2N3904"].params["TR"].span, Span("t.cir", 5, 5, 11)),
            (lambda n: n.models["2N3904"].params["RB"].span.line, 5),
            (lambda n: n.models["2N3904"].loc.line, 2),
        ],
    ),
    Case(
        "diode_1n914",
        "diode\n" + D1N914,
        [
            (
                lambda n: {k: num(v) for k, v in n.models["D1N914"].params.items()},
                pytest.approx(
                    {"IS": 2.52e-9, "RS": 0.568, "N": 1.752, "CJO": 4e-12, "M": 0.4, "TT": 20e-9}, rel=1e-15
                ),
            ),
        ],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_construct(case: Case) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", NetlistWarning)
        net = parse(case.text)
    for getter, expected in case.checks:
        assert getter(net) == expected


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_literal_span_points_at_its_text(case: Case) -> None:
    """Each number's span covers exactly the characters that spell it, on its physical line."""
    net = parse(case.text)
    seen = 0
    for expr in all_exprs(net):
        for e in walk(expr):
            if isinstance(e, Num) and e.span is not None:
                assert parse_number(span_text(net, e.span)) == pytest.approx(e.value, rel=1e-15)
                seen += 1
    assert seen > 0 or case.id in ("end_stops_parsing", "title_command")


def test_koren_model_evaluates_to_the_koren_formula() -> None:
    """The parsed ngspice and PSpice triodes give Koren's plate current (independent Python formula)."""
    net = parse("t\n" + KOREN_NGSPICE + KOREN_PSPICE)
    sub = net.subckts["12AX7"]
    env_p = {k: num(v) for k, v in sub.defaults.items()}
    psub = net.subckts["12AX7P"]
    env_ps = {k: num(v) for k, v in psub.defaults.items()}
    for vp, vg in [(250.0, -2.0), (100.0, -0.5), (180.0, -1.2), (20.0, 0.0)]:
        env = {**env_p, NodeV("p", "k"): vp, NodeV("g", "k"): vg}
        e1 = ev(find(sub, "BE1").params["V"], env)
        ip = ev(find(sub, "BP").params["I"], {**env_p, NodeV("e1"): e1})
        assert ip == pytest.approx(koren_plate_current(vp, vg), rel=1e-13)
        env = {**env_ps, NodeV("p", "k"): vp, NodeV("g", "k"): vg}
        e7 = ev(find(psub, "E1").params["VALUE"], env)
        ig = ev(find(psub, "G1").params["VALUE"], {**env_ps, NodeV("7"): e7})  # PWR + PWRS: twice Koren's
        assert ig == pytest.approx(koren_plate_current(vp, vg), rel=1e-13)


# ---------------------------------------------------------------- includes


def test_include_and_lib_files() -> None:
    net = parse_file(DATA / "include_main.cir")
    files = {Path(f).relative_to(DATA).as_posix() for f in net.sources}
    assert files == {
        "include_main.cir",
        "models/diodes.inc",
        "models/bjt.inc",
        "more/load.inc",
        "lib/tubes.lib",
    }
    assert sorted(net.models) == ["2N3904", "D1N914"]
    assert list(net.subckts) == ["12AX7"]  # only the TRIODES section: the PENTODES one has a MOSFET
    assert [p.name for p in net.params] == ["rload"]
    rl = find(net, "RL")
    assert Path(rl.loc.file).as_posix().endswith("more/load.inc") and rl.loc.line == 3
    assert Path(net.models["2N3904"].params["RB"].span.file).name == "bjt.inc"
    assert num(net.models["2N3904"].params["TR"]) == pytest.approx(239.5e-9, rel=1e-15)
    assert [e.name for e in net.elements] == ["RL", "VIN", "R1", "D1", "Q1", "XV1"]
    assert net.subckts["12AX7"].loc.file.endswith("tubes.lib") and net.subckts["12AX7"].loc.line == 3
    for f, lines in net.sources.items():  # every file's lines, line endings kept
        assert "".join(lines) == Path(f).read_text()


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "latin-1"])
def test_file_encodings(encoding: str, tmp_path: Path) -> None:
    """LTspice writes UTF-16 with a byte-order mark; old files are Latin-1; 'µ' must survive all."""
    path = tmp_path / "enc.cir"
    path.write_bytes("title\r\nC1 a 0 4.7µ\r\nR1 a 0 1k\r\n".encode(encoding))
    net = parse_file(path)
    assert val(net, "C1") == pytest.approx(4.7e-6, rel=1e-15) and val(net, "R1") == 1e3
    assert find(net, "R1").loc.line == 3


def test_include_from_string_resolves_relative_to_given_path() -> None:
    text = "t\n.include models/diodes.inc\n.lib 'lib/tubes.lib' triodes\nD1 a 0 D1N914\n"
    net = parse_string(text, str(DATA / "virtual.cir"))
    assert "D1N914" in net.models and "12AX7" in net.subckts and [p.name for p in net.params] == ["rload"]


REFERENCE_NETLISTS = sorted((Path(__file__).parent.parent / "netlists").glob("*.cir"))


@pytest.mark.parametrize("path", REFERENCE_NETLISTS, ids=[p.name for p in REFERENCE_NETLISTS])
def test_reference_netlists_parse(path: Path) -> None:
    """The project's reference circuits parse, and every literal's span spells its value."""
    net = parse_file(path)
    assert net.elements or net.subckts
    for expr in all_exprs(net):
        for e in walk(expr):
            if isinstance(e, Num) and e.span is not None:
                assert parse_number(span_text(net, e.span)) == pytest.approx(e.value, rel=1e-15)


def test_include_same_file_twice_gives_duplicate_model_error() -> None:
    text = "t\n.include models/bjt.inc\n.include models/bjt.inc\n"
    with pytest.raises(NetlistError, match="model 2N3904 is defined twice"):
        parse_string(text, str(DATA / "virtual.cir"))


# ---------------------------------------------------------------- warnings


@pytest.mark.parametrize(
    "text, message",
    [
        ("R1 a b 1k\nR2 a 0 1\n", "first line is always the title"),
        ("t\nB1 a 0 V={limit(V(b), 0, 1)}\n", "limit"),
        ("t\nD1 a 0 DM off\n.model DM D\n", "OFF"),
        ("t\n.model DM D(IS=1n IS=2n)\n", "given twice"),
        ("t\nR41 a 0 1-3k\n", r"R41: ngspice 39 reads the resistance '1-3k' as two numbers and keeps the last, -3k"),
    ],
)
def test_warnings(text: str, message: str) -> None:
    with pytest.warns(NetlistWarning, match=message):
        parse(text)


def test_duplicate_model_parameter_keeps_last_value_like_ngspice() -> None:
    with pytest.warns(NetlistWarning):
        net = parse("t\n.model DM D(IS=1n IS=2n)\n")
    assert num(net.models["DM"].params["IS"]) == 2e-9


@pytest.mark.requires_ngspice
def test_sign_joined_values_read_as_ngspice_does(tmp_path: Path) -> None:
    """``1-3k`` (a KiCad value field written as a range) is what ngspice 39 makes of it: the last number."""
    values = {"R": ["1-3k", "1e3-5", "1.5e-3-2k", "1u+2k", "-1-3k", "2.2k+4.7k"], "C": ["1-3n", "10p+47n"],
              "L": ["1-3m", "1u+2m"]}
    unit = {"R": "resistance", "C": "capacitance", "L": "inductance"}
    cards = [(kind, f"{kind}S{i}", v) for kind, vs in values.items() for i, v in enumerate(vs)]
    lines = ["sign-joined values", "V1 a 0 1", "Rload a 0 1"] + [f"{name} a b{name} {v}\nRb{name} b{name} 0 1"
                                                         for _, name, v in cards]
    lines += [".control", "set numdgt=15", "op"] + [f"print @{name}[{unit[k]}]" for k, name, _ in cards]
    lines += [".endc", ".end", ""]
    path = tmp_path / "signs.cir"
    path.write_text("\n".join(lines))
    out = subprocess.run(["ngspice", "-b", str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    got = {m.group(1).upper(): float(m.group(2))
           for m in re.finditer(r"^@(\w+)\[\w+\] = (\S+)", out.stdout, re.M)}
    assert len(got) == len(cards), out.stdout + out.stderr
    with pytest.warns(NetlistWarning, match="as two numbers and keeps the last"):
        net = parse(path.read_text())
    for _, name, text in cards:
        assert val(net, name) == pytest.approx(got[name], rel=1e-12), text


# ---------------------------------------------------------------- expressions

EXPRESSIONS = [  # (text, value by hand)
    ("1+2*3", 7.0),
    ("(1+2)*3", 9.0),
    ("-2^2", -4.0),  # ^ binds tighter than unary minus
    ("2^3^2", 64.0),  # ngspice: '^' is left associative
    ("2**3", 8.0),
    ("(-2)^2", 4.0),
    ("(-2)^3", 8.0),  # ngspice: x^y = |x|^y
    ("2^-1", 0.5),
    ("-3+-2", -5.0),
    ("10/4/5", 0.5),
    ("1 < 2 ? 10 : 20", 10.0),
    ("1 ? 2 : 0 ? 3 : 4", 2.0),
    ("0 ? 2 : 0 ? 3 : 4", 4.0),
    ("!0 + 1", 2.0),
    ("1 && 0 || 1", 1.0),
    ("2 == 2.0", 1.0),
    ("3 != 3", 0.0),
    ("1 + 2 > 2", 1.0),
    ("min(1,2)+max(3,4)", 5.0),
    ("limit(5, 0, 3)", 3.0),
    ("limit(-1, 0, 3)", 0.0),
    ("if(0, 1, 2)", 2.0),
    ("ternary_fcn(1, 1, 2)", 1.0),
    ("pwr(-2, 3)", -8.0),
    ("pwrs(-4, 0.5)", -2.0),
    ("pow(-2, 2)", 4.0),
    ("uramp(-3)+uramp(2)", 2.0),
    ("u(0) + u(-1) + u(2)", 1.5),
    ("u2(0.25) + u2(7)", 1.25),
    ("sgn(-3)", -1.0),
    ("ln(e)", 1.0),
    ("log(100)", math.log(100.0)),  # ngspice's log is natural
    ("log10(100)", 2.0),
    ("sqrt(16)", 4.0),
    ("pi", math.pi),
    ("2k*3", 6000.0),
    ("1e-3*1meg", 1000.0),
    ("1.5u/3", 0.5e-6),
    ("abs(-3)", 3.0),
    ("floor(2.5) + ceil(2.5)", 5.0),
    ("atan(1)*4", math.pi),
]


@pytest.mark.parametrize("text, expected", EXPRESSIONS, ids=[t for t, _ in EXPRESSIONS])
def test_expression_values(text: str, expected: float) -> None:
    e = parse_expr(text)
    assert evaluate(e, {}, MATH_OPS) == pytest.approx(expected, rel=1e-15, abs=1e-300)
    assert float(evaluate(e, {}, TORCH_OPS)) == pytest.approx(expected, rel=1e-15, abs=1e-300)
    assert float(to_sympy(e, {}).evalf(30)) == pytest.approx(expected, rel=1e-14, abs=1e-300)


def test_expression_structure() -> None:
    assert parse_expr("a ? b : c") == Cond(Name("a"), Name("b"), Name("c"))
    assert parse_expr("if(a, b, c)") == Cond(Name("a"), Name("b"), Name("c"))
    assert parse_expr("V(A, gnd) + V(B) + I(vin)") == parse_expr("v(a) + v(b,0) + i(VIN)")
    assert [e for e in walk(parse_expr("I(vin)")) if isinstance(e, BranchI)] == [BranchI("VIN")]
    assert free_names(parse_expr("a*b + sin(c) + V(d) + pi")) == {"a", "b", "c", "pi"}


# Expressions of V(a) compared with ngspice's own B-source evaluation (ngspice 39, numdgt 15).
NGSPICE_EXPRESSIONS = [
    "V(a)^3", "V(a)**2", "pwr(V(a),1.5)", "uramp(V(a))", "-V(a)^2", "2^3^2", "2^-1", "-3+-2",
    "exp(V(a))", "ln(1+V(a)*V(a))", "log(3+V(a))", "log10(5+V(a))", "sqrt(4+V(a))", "abs(V(a))",
    "min(V(a),1)", "max(V(a),1)", "sgn(V(a))", "u(V(a))", "V(a) < 0 ? 7 : 8", "V(a) > 0 && V(a) < 1",
    "V(a) < 0 || V(a) > 2", "!(V(a) > 0) + 1", "V(a) == 3", "V(a) != 3", "V(a) <= 3", "V(a) >= 3",
    "atan(V(a))", "sin(V(a))", "cos(V(a))", "tan(V(a)/3)", "sinh(V(a))", "cosh(V(a))", "tanh(V(a))",
    "1 ? 2 : 0 ? 3 : 4", "2k*V(a)", "pow(V(a), 3)", "u2(V(a))", "1.5e3k/1meg + 10u*1e5",
    "V(a)/600*ln(1+exp(600*(1/100+0.5/sqrt(300+V(a)*V(a)))))", "2*pwr(uramp(V(a)),1.4)/1060",
]  # fmt: skip


@pytest.mark.requires_ngspice
@pytest.mark.parametrize("a", [-2.0, -0.5, 0.7, 3.0])
def test_expressions_match_ngspice(a: float, tmp_path: Path) -> None:
    lines = ["expression check", f"V1 a 0 {a!r}"]
    lines += [f"B{i} n{i} 0 V={text}" for i, text in enumerate(NGSPICE_EXPRESSIONS)]
    lines += [".control", "set numdgt=15", "op"]
    lines += [f"print v(n{i})" for i in range(len(NGSPICE_EXPRESSIONS))]
    lines += [".endc", ".end", ""]
    path = tmp_path / "expr.cir"
    path.write_text("\n".join(lines))
    out = subprocess.run(
        ["ngspice", "-b", str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    got = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"^v\(n(\d+)\) = (\S+)", out.stdout, re.M)}
    assert len(got) == len(NGSPICE_EXPRESSIONS), out.stdout + out.stderr
    net = parse(path.read_text())
    for i, text in enumerate(NGSPICE_EXPRESSIONS):
        expr = find(net, f"B{i}").params["V"]
        ours = evaluate(expr, {NodeV("a"): a}, MATH_OPS)
        assert ours == pytest.approx(got[i], rel=1e-12, abs=1e-12), text


@pytest.mark.requires_ngspice
def test_si_numbers_match_ngspice(tmp_path: Path) -> None:
    """1 A through resistors written with suffixes and units: ngspice's node voltage is the value."""
    values = ["10k", "2.2kOhm", "1meg", "1MEG", "1.5E3k", ".5", "0.25e+2", "3.3m", "47u", "100n", "1mil",
              "4.7µ",
              "10uF", "1F", "1Mohm", "100pF", "5V", "+2", "1e-9"]  # fmt: skip
    lines = ["numbers"] + [f"I{i} 0 n{i} 1\nR{i} n{i} 0 {v}" for i, v in enumerate(values)]
    lines += (
        [".control", "set numdgt=15", "op"]
        + [f"print v(n{i})" for i in range(len(values))]
        + [".endc", ".end", ""]
    )
    path = tmp_path / "num.cir"
    path.write_text("\n".join(lines), encoding="utf-8")
    out = subprocess.run(
        ["ngspice", "-b", str(path)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    got = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"^v\(n(\d+)\) = (\S+)", out.stdout, re.M)}
    net = parse(path.read_text(encoding="utf-8"))
    assert len(got) == len(values), out.stdout + out.stderr
    for i, text in enumerate(values):
        assert val(net, f"R{i}") == pytest.approx(got[i], rel=1e-12), text


SMOOTH = [  # differentiable around the test points
    "pwr(x, 1.4)", "2*pwr(uramp(x), 1.4)/1060", "x^2 + x^3", "max(x, 0.5) + min(x, 2)", "limit(x, 0, 3)",
    "x > 1 ? x*x : 3*x", "exp(x)*ln(1+x*x)", "sqrt(1+x*x)/tanh(x)", "pwrs(x, 0.5)*sin(x)",
    "log10(x*x+1)*atan(x)",
    "u(x)*x + uramp(x-2)", "if(x < 0, -x, x)", "V(p)*x + I(V1)",
]  # fmt: skip


@pytest.mark.parametrize("text", SMOOTH)
def test_torch_keeps_gradients_matching_sympy(text: str) -> None:
    """TORCH_OPS gives the MATH_OPS value and the sympy derivative (an independent differentiation)."""
    expr = parse_expr(text)
    xs = sympy.Symbol("x", real=True)
    sym = to_sympy(expr, {"x": xs, NodeV("p"): sympy.Integer(3), BranchI("V1"): sympy.Rational(1, 4)})
    dsym = sympy.diff(sym, xs)
    for x0 in (-1.3, 0.7, 1.7, 2.6):
        if text.startswith(("pwrs", "sqrt")) and x0 < 0:
            x0 = -x0
        env_m = {"x": x0, NodeV("p"): 3.0, ("I", "V1"): 0.25}
        x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
        y = evaluate(expr, {"x": x, NodeV("p"): 3.0, ("I", "V1"): 0.25}, TORCH_OPS)
        (g,) = torch.autograd.grad(y, x)
        y = float(y.detach())
        assert y == pytest.approx(evaluate(expr, env_m, MATH_OPS), rel=1e-13)
        assert y == pytest.approx(float(sym.subs(xs, x0).evalf(30)), rel=1e-12)
        assert float(g) == pytest.approx(float(dsym.subs(xs, x0).evalf(30)), rel=1e-10, abs=1e-12)


def test_torch_batched_tensors() -> None:
    expr = parse_expr("x < 0 ? pwr(x, 2) : max(x, y)")
    x = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    got = evaluate(expr, {"x": x, "y": y}, TORCH_OPS)
    assert got.tolist() == [-4.0, 1.0, 3.0]


def test_to_sympy_semantics() -> None:
    x = sympy.Symbol("x", real=True)
    assert to_sympy(parse_expr("pwr(x, 1.5)"), {"x": x}) == sympy.sign(x) * sympy.Abs(x) ** sympy.Float(1.5)
    assert to_sympy(parse_expr("uramp(x)"), {"x": x}) == sympy.Max(x, 0)
    assert to_sympy(parse_expr("log(x)"), {"x": x}) == sympy.log(x)
    assert to_sympy(parse_expr("x^2"), {"x": x}) == x**2  # |x|^2 = x^2 for real x
    assert to_sympy(parse_expr("V(a, b)*2"), {("V", "a", "b"): x}) == 2 * x


def test_evaluate_errors_name_the_location() -> None:
    from circuitsim.netlist.ast import Loc

    loc = Loc("f.cir", 7)
    with pytest.raises(NetlistError, match=r"^f\.cir:7: undefined parameter 'zz'$"):
        evaluate(parse_expr("zz + 1"), {}, MATH_OPS, loc)
    with pytest.raises(NetlistError, match="^f.cir:7: cannot evaluate"):
        evaluate(parse_expr("1/x"), {"x": 0.0}, MATH_OPS, loc)
    with pytest.raises(NetlistError, match="V\\(a\\) has no value"):
        evaluate(parse_expr("V(a)"), {}, MATH_OPS, loc)
    with pytest.raises(NetlistError, match="unknown function 'nope'"):
        parse_expr("nope(1)", loc)


# ---------------------------------------------------------------- writer

FORMATS = [  # (value, original literal, text by hand)
    (2213.456789, "2.2k", "2.213456789k"),
    (1.5e-8, "10nF", "15nF"),
    (0.6, "0.568", "0.6"),
    (47000.0, "100k", "47k"),
    (1e-5, "10u", "10u"),
    (0.002, "1k", "2m"),
    (-3.3, "5", "-3.3"),
    (1.23456789e-8, "1e-9", "1.23456789e-08"),
    (2.5e-6, "4.7µF", "2.5µF"),
    (1e7, "100", "10meg"),
    (3e-16, "1", "3e-16"),
    (2200.0, "2.2K", "2.2K"),
    (4.7e6, "1Meg", "4.7Meg"),
    (0.0, "1k", "0k"),
    (1.0 / 3.0, "0.5", "0.3333333333333333"),
]


@pytest.mark.parametrize("value, original, expected", FORMATS)
def test_format_value(value: float, original: str, expected: str) -> None:
    text = format_value(value, original)
    assert text == expected
    assert parse_number(text) == pytest.approx(value, rel=1e-15, abs=0)


def test_format_value_round_trips() -> None:
    rng = np.random.default_rng(1)
    originals = ["1k", "10uF", "2.2", "1e-9", "4.7µ", "1meg", "100pF", "0.5", "3", "1mil", "-2m", "5V"]
    for _ in range(3000):
        value = float(rng.choice([-1, 1]) * 10 ** rng.uniform(-17, 14) * rng.uniform(1, 10))
        original = str(rng.choice(originals))
        text = format_value(value, original)
        assert parse_number(text) == pytest.approx(value, rel=1e-12), (value, original, text)


def test_rewrite_values_changes_only_the_spans(tmp_path: Path) -> None:
    src = tmp_path / "netlists"
    shutil.copytree(DATA, src)
    main = src / "include_main.cir"
    net = parse_file(main)
    r1 = find(net, "R1").value
    is_ = net.models["D1N914"].params["IS"]
    tr = net.models["2N3904"].params["TR"]  # on a continuation line
    rload = net.params[0].expr
    mu = find(net, "XV1").params["mu"]
    new = {r1.span: 3300.5, is_.span: 1.234567891e-9, tr.span: 2.5e-7, rload.span: 47e3, mu.span: 101.25}
    texts = rewrite_values(net, new)
    assert set(texts) == set(net.sources)
    changed_lines = {(s.file, s.line) for s in new}
    for f, lines in net.sources.items():
        out = texts[f].splitlines(keepends=True)
        assert len(out) == len(lines)
        for i, (a, b) in enumerate(zip(lines, out), start=1):
            if (f, i) not in changed_lines:
                assert a == b
            else:  # the same line around the literal
                span = next(s for s in new if (s.file, s.line) == (f, i))
                assert b.startswith(a[: span.start]) and b.endswith(a[span.end :])
        Path(f).write_text(texts[f])
    again = parse_file(main)
    assert val(again, "R1") == pytest.approx(3300.5, rel=1e-12)
    assert num(again.models["D1N914"].params["IS"]) == pytest.approx(1.234567891e-9, rel=1e-12)
    assert num(again.models["2N3904"].params["TR"]) == pytest.approx(2.5e-7, rel=1e-12)
    assert num(again.params[0].expr) == pytest.approx(47e3, rel=1e-12)
    assert num(find(again, "XV1").params["mu"]) == pytest.approx(101.25, rel=1e-12)
    assert num(again.models["D1N914"].params["RS"]) == 0.568  # untouched neighbour


def test_rewrite_negative_value_inside_expression() -> None:
    net = parse("t\n.param k=2\nR1 a b {k*5}\nV1 a 0 DC -5 ; comment\n")
    five = find(net, "R1").value.right
    dc = find(net, "V1").source.dc
    texts = rewrite_values(net, {five.span: -3.0, dc.span: 7.5})
    again = parse(texts["t.cir"])
    assert ev(find(again, "R1").value, {"k": 2.0}) == -6.0
    assert num(find(again, "V1").source.dc) == 7.5
    assert texts["t.cir"].endswith("V1 a 0 DC 7.5 ; comment\n")


def test_rewrite_keeps_crlf_line_endings() -> None:
    text = "t\r\nR1 a b 1k\r\nC1 b 0 10n\r\n"
    net = parse(text)
    out = rewrite_values(net, {find(net, "C1").value.span: 22e-9})["t.cir"]
    assert out == "t\r\nR1 a b 1k\r\nC1 b 0 22n\r\n"


def test_rewrite_rejects_a_span_that_is_not_a_number() -> None:
    net = parse("t\nR1 a b 1k\n")
    with pytest.raises(ValueError, match="not a number"):
        rewrite_values(net, {Span("t.cir", 2, 0, 2): 1.0})


# ---------------------------------------------------------------- dialects


@pytest.mark.parametrize("dialect, expected", [("ngspice", -2.0), ("ltspice", 2.0), ("pspice", 2.0)])
def test_dialect_decides_what_pwr_means(dialect: str, expected: float) -> None:
    """ngspice's pwr(x, y) is sgn(x)|x|^y; LTspice's and PSpice's is |x|^y (pwrs is signed in all)."""
    net = parse_string("t\nB1 o 0 V={pwr(V(a), 0.5)}\nB2 p 0 V={pwrs(V(a), 0.5)}\n", "t.cir", dialect=dialect)
    assert net.dialect == dialect and net.dialect_note is None
    assert ev(find(net, "B1").params["V"], {NodeV("a"): -4.0}) == expected
    assert ev(find(net, "B2").params["V"], {NodeV("a"): -4.0}) == -2.0


@pytest.mark.parametrize(
    "text, note",
    [
        ("t\nR1 a 0 1k\n.backanno\n", "t.cir:3: reading as ltspice (detected from '.backanno'"),
        ("t\nB1 o 0 V={pwrs(V(a), 2)}\n", "t.cir:2: reading as ltspice (detected from the function pwrs()"),
        ("t\nR1 a 0 1k\n* .backanno in a comment\nB1 o 0 V={pwr(V(a), 2)}\n", None),
    ],
)
def test_dialect_detection_note(text: str, note: str | None) -> None:
    from circuitsim.netlist.errors import DialectNote

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        net = parse_string(text, "t.cir")
    notes = [str(w.message) for w in seen if issubclass(w.category, DialectNote)]
    if note is None:
        assert net.dialect == "ngspice" and net.dialect_note is None and notes == []
    else:
        assert net.dialect == "ltspice" and net.dialect_note.startswith(note) and len(notes) == 1
        assert "\n" not in notes[0] and notes[0] == net.dialect_note


def test_ltspice_library_path_falls_back_to_the_file_next_to_the_netlist(tmp_path: Path) -> None:
    (tmp_path / "koren.lib").write_text(KOREN_NGSPICE)
    main = tmp_path / "pre.net"
    main.write_text("* C:\\x\\pre.asc\n.lib C:\\Users\\me\\LTspiceXVII\\lib\\sub\\koren.lib\nX1 p g k 12AX7\n")
    with pytest.warns(NetlistWarning, match="reading .*koren.lib"):
        net = parse_file(main)
    assert "12AX7" in net.subckts and Path(net.subckts["12AX7"].loc.file) == tmp_path / "koren.lib"


@pytest.mark.parametrize("where", ["beside", "folder"])
def test_ltspice_library_names_match_as_on_windows(tmp_path: Path, where: str) -> None:
    """'.lib EIT_sub\\vdc_single.sub' finds EIT_sub/Vdc_single.sub or Vdc_single.sub beside the netlist:
    a relative path written with backslashes, and a name that differs only in case (LTspice's Windows)."""
    folder = tmp_path / "EIT_sub" if where == "folder" else tmp_path
    folder.mkdir(exist_ok=True)
    (folder / "Vdc_single.sub").write_text(".subckt vdc_single 1\nv1 1 0 dc={v}\n.param v=0\n.ends\n")
    main = tmp_path / "q.net"
    main.write_text("* Z:\\home\\q.asc\nXU1 plus vdc_single V=5V\nR1 plus 0 1k\n"
                    ".lib EIT_sub\\vdc_single.sub\n.backanno\n")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        net = parse_file(main)
    assert Path(net.subckts["VDC_SINGLE"].loc.file) == folder / "Vdc_single.sub"
    assert any("reading" in str(w.message) and "Vdc_single.sub" in str(w.message) for w in seen)
    (folder / "VDC_SINGLE.SUB").write_text("* a second file that matches but for case: ambiguous\n")
    with pytest.raises(NetlistError, match=r"library file 'EIT_sub\\vdc_single.sub' not found"):
        parse_file(main)


def test_missing_ltspice_standard_library_is_skipped_with_a_warning(tmp_path: Path) -> None:
    """LTspice writes '.lib C:\\...\\lib\\cmp\\standard.bjt' into every export; absent here, it is skipped."""
    main = tmp_path / "t.net"
    main.write_text("* x.asc\nQ1 c b 0 NPN\nR1 c 0 1k\n.model NPN NPN\n"
                    ".lib C:\\Users\\me\\Documents\\LTspiceXVII\\lib\\cmp\\standard.bjt\n.backanno\n")
    with pytest.warns(NetlistWarning, match="LTspice's own library .*standard.bjt' is not here and is skipped"):
        net = parse_file(main)
    assert list(net.models) == ["NPN"]
    with pytest.raises(NetlistError, match=r"library file 'C:\\x\\other.lib' not found"):
        parse_string("t\n.lib C:\\x\\other.lib\n", str(tmp_path / "u.cir"))


# ---------------------------------------------------------------- PSpice temperature coefficients

# (element line, TC1, TC2 by hand, whether ngspice 39 reads it outside its PSpice mode).  PSpice writes 'TC=a,b' on
# R, C and L (ROHM's BA4558 macromodel: 'R_R27 a b 10 TC=0.001,0', 'C_C3 a b 33.5p TC=0,0'); ngspice 39 reads
# 'TC=a b' and 'TC=a, b' on R itself and the rest only in its PSpice mode
TC_SPELLINGS = [
    ("R1 a 0 10 TC=0.001", 1e-3, 0.0, True),
    ("R2 a 0 10 TC=0.001 0.0001", 1e-3, 1e-4, True),
    ("R3 a 0 10 TC=0.001, 0.0001", 1e-3, 1e-4, True),
    ("R4 a 0 10 TC = 0.002 3e-5 m=2", 2e-3, 3e-5, True),
    ("R5 a 0 10 TC=0.001,0.0001", 1e-3, 1e-4, False),
    ("R6 a 0 10 TC=-0.0015,0", -1.5e-3, 0.0, False),
    ("R7 a 0 10 TC=0.001 ,0.0001", 1e-3, 1e-4, False),
    ("C1 a 0 30p TC=0,0", 0.0, 0.0, False),
    ("C2 a 0 30p TC=0.001", 1e-3, 0.0, False),
    ("C3 a 0 30p TC=0.001 2e-6", 1e-3, 2e-6, False),
    ("L1 a b1 1m TC=0.004,5e-6", 4e-3, 5e-6, False),
]


def _ngspice_tc(tmp_path: Path, lines: list[str], behaviour: str | None) -> str:
    """ngspice's output for ``print @X[tc1] @X[tc2]`` of each element line (``set ngbehavior=`` when given)."""
    names = [ln.split()[0].lower() for ln in lines]
    deck = ["tc probe", "V1 a 0 1", "Rb1 b1 0 1", *lines, ".control", "set numdgt=15", "op"]
    deck += [f"print @{n}[tc1] @{n}[tc2]" for n in names] + [".endc", ".end", ""]
    (tmp_path / "tc.cir").write_text("\n".join(deck))
    (tmp_path / ".spiceinit").write_text(f"set ngbehavior={behaviour}\n" if behaviour else "")
    out = subprocess.run(["ngspice", "-b", "tc.cir"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    return out.stdout + out.stderr


@pytest.mark.requires_ngspice
def test_pspice_temperature_coefficients_read_as_ngspice_does(tmp_path: Path) -> None:
    """TC1 and TC2 as ngspice 39 reads each spelling in its PSpice mode (ngbehavior=psa), the PSpice dialect's,
    and, for those it reads outside that mode, as it reads them there: the ngspice dialect's."""
    for behaviour, dialect, rows in (("psa", "pspice", TC_SPELLINGS),
                                     (None, "ngspice", [r for r in TC_SPELLINGS if r[3]])):
        out = _ngspice_tc(tmp_path, [r[0] for r in rows], behaviour)
        got = {m.group(1).upper(): (float(m.group(2)), float(m.group(3)))
               for m in re.finditer(r"^@(\w+)\[tc1\] = (\S+)\n@\w+\[tc2\] = (\S+)", out, re.M)}
        assert len(got) == len(rows), out
        net = parse_string("t\nV1 a 0 1\nRb1 b1 0 1\n" + "\n".join(r[0] for r in rows) + "\n", "t.cir",
                           dialect=dialect)
        for line, tc1, tc2, _ in rows:
            name = line.split()[0].upper()
            params = find(net, name).params
            ours = (num(params["TC1"]), num(params["TC2"]) if "TC2" in params else 0.0)
            assert ours == pytest.approx((tc1, tc2), rel=1e-15) == got[name], (behaviour, line)


@pytest.mark.requires_ngspice
@pytest.mark.parametrize("line, tc1, tc2, ngspice_reads", TC_SPELLINGS, ids=[r[0].split()[0] for r in TC_SPELLINGS])
def test_pspice_temperature_coefficients_outside_the_pspice_dialect(tmp_path: Path, line: str, tc1: float,
                                                                    tc2: float, ngspice_reads: bool) -> None:
    """What ngspice 39 rejects outside its PSpice mode is a one-line error in the ngspice dialect (naming the line and
    --dialect pspice), and without a dialect switches the reading to pspice with a one-line note."""
    from circuitsim.netlist.errors import DialectNote

    out = _ngspice_tc(tmp_path, [line], None)
    assert ("unknown parameter" not in out) == ngspice_reads, out
    text = f"t\nV1 a 0 1\nRb1 b1 0 1\n{line}\n"
    if ngspice_reads:
        assert parse_string(text, "t.cir", dialect="ngspice").dialect == "ngspice"
        return
    with pytest.raises(NetlistError, match=r"is PSpice syntax, which ngspice 39 rejects outside its PSpice mode") as e:
        parse_string(text, "t.cir", dialect="ngspice")
    assert str(e.value).startswith("t.cir:4: ") and "\n" not in str(e.value) and "--dialect pspice" in str(e.value)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        net = parse_string(text, "t.cir")
    notes = [str(w.message) for w in seen if issubclass(w.category, DialectNote)]
    assert net.dialect == "pspice" and notes == [net.dialect_note]
    assert net.dialect_note.startswith("t.cir:4: reading as pspice (detected from 'TC=")


def test_pspice_tc_given_with_tc1_is_given_twice() -> None:
    with pytest.raises(NetlistError, match=r"t.cir:2: R1: parameter 'TC1' is given twice"):
        parse_string("t\nR1 a 0 10 TC1=0.001 TC=0.002\n", "t.cir")
