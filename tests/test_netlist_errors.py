"""Malformed netlists: each raises NetlistError whose str() is one line 'file:line: message'
naming the right line, and the parser never lets another exception type escape."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from circuitsim.netlist import NetlistError, NetlistWarning, parse_file, parse_string

DATA = Path(__file__).parent / "data" / "netlists"

# (netlist text, expected substring of the message, 1-based line the error must name)
BAD = [
    ("t\nR1 a\n", "R1: missing nodes", 2),
    ("t\nR1 a b\n", "missing resistance value", 2),
    ("t\nC1 a b 1.2.3k\n", "bad number '1.2.3k'", 2),
    ("t\nR1 a b\n+ 4k7\n", "'4k7' is ambiguous", 3),
    ("t\nF1 a b 2\n", "F1: expected 'F1 out+ out- Vcontrol gain'", 2),
    ("t\nR1 a 0 1\nV1 a GND ( )\n", "V1: empty '( )'", 3),
    ("t\nV1 a GND ( 9\n", "V1: expected ')' after the DC value", 2),
    ("t\nV1 a GND dc( 9 9 )\n", "V1: expected ')' after the DC value", 2),
    ("t\nH1 a b V1\n", "H1: expected 'H1 out+ out- Vcontrol transresistance'", 2),
    ("t\nH1 a b V1 {2k\n", "unterminated '{'", 2),
    ("t\nF1 a b POLY(1) V1 0 1 2\n", "F1: POLY(1) terms beyond the linear ones (coefficient 3 on) are not", 2),
    ("t\nF1 a b V1 2 foo=1\n", "F1: unknown parameter 'foo'", 2),
    ("t\nA1 %vd([a b]) src\n", "A1: XSPICE port lists ('%vd') are not supported", 2),
    ("t\nR1 a 0 1\nARV1 a w __RV1\n", "ARV1: expected 'ARV1 r0 wiper r1 POTENTIOMETER_MODEL'", 3),
    ("t\nARV1 a w 0 NOSUCH\n", "ARV1: model 'NOSUCH' is not defined", 2),
    ("t\n.model __RV1 potentiometer( r=100k position= )\n", "the value of position", 2),
    ("t\n.backanno\nV1 a 0 wavefile=\n", "V1: expected 'wavefile=FILE'", 3),
    ("t\nV1 a 0 1 wavefile=x.wav\n", "V1: 'wavefile=' together with another value", 2),
    ("t\n.model D1 D(IS=1n mfg=\"OnSemi)\n", "unterminated \"-quoted text", 2),
    ("t\nE1 a 0 POLY(2) (1,0) 0.5\n", "E1: POLY(2) needs 4 controls and at least one coefficient", 2),
    ("t\nE1 a 0 POLY(1) (1,0) 0 1 0.5\n", "E1: POLY(1) terms beyond the linear ones (coefficient 3 on)", 2),
    ("t\nF1 a 0 POLY 2 V1 V2 0 1 1\n", "F1: expected 'POLY(n)'", 2),
    ("t\nR1 a 0 1\nS1 a 0 c 0 sw\n", "element type 'S' (voltage-controlled switch) is not supported", 3),
    ("t\nR1 a 0 1\nM1 d g s nmos\n", "M1: missing model name (expected 'M1 drain gate source bulk model", 3),
    ("t\nM1 d g s b nm 2\n", "M1: unexpected '2'", 2),
    ("t\nJ1 d g nj\n", "J1: missing model name (expected 'J1 drain gate source model [area]')", 2),
    ("t\n%1 a b\n", "unknown element or statement '%1'", 2),
    ("t\nR1 a b {1+2\n", "unterminated '{'", 2),
    ("t\nR1 a b {(1+2}\n", "expected ')'", 2),
    ("t\nV1 a 0 SIN(0 1 1k\n", "missing ')'", 2),
    ("t\nR1 a 0 1\n.foo bar\n", "unknown dot command '.foo'", 3),
    ("t\n.ends\n", "'.ends' without '.subckt'", 2),
    ("t\n.subckt S a b\nR1 a b 1k\n", "subcircuit S has no '.ends'", 2),
    ("t\n.model M1 VDMOS(VTO=1)\n", "model type 'VDMOS' of model M1 is not supported", 2),
    ("t\nB1 a 0 2*V(b)\n", "needs V={expr} or I={expr}", 2),
    ("t\nR1 a b 1k\n* comment\nr1 b c 2k\n", "element R1 is defined twice (first at bad.cir:2)", 4),
    ("t\n.model D1 D(IS=1)\n.model d1 D(IS=2)\n", "model D1 is defined twice", 3),
    ("t\n.subckt S a\n.ends\n.subckt s b\n.ends\n", "subcircuit S is defined twice", 4),
    ("t\nB1 a 0 V={foo(V(b))}\n", "unknown function 'foo'", 2),
    ("t\nR1 a b {rval}\n", "undefined parameter 'rval'", 2),
    ("t\n.param a=1\n.param b={a+c}\n", "undefined parameter 'c'", 3),
    ("t\nX1 a b NOSUCH\n", "subcircuit 'NOSUCH' is not defined", 2),
    ("t\n.subckt S a b\nR1 a b 1k\n.ends\nX1 a S\n", "has 2 ports (a b) but 1 node was given", 5),
    ("t\n.subckt S a params: k=1\n.ends\nX1 a S j=2\n", "has no parameter 'j'", 4),
    ("t\n+ 10k\n", "continuation line '+' with no statement before it", 2),
    ("", "empty netlist", 1),
    ("  \n\n", "empty netlist", 1),
    ("t\nE1 a 0 POLY(2) b 0 c 0 0 1 1 0.1\n", "POLY(2) terms beyond the linear ones", 2),
    ("t\nG1 a 0 TABLE {V(b)} = (0,0) (1,1)\n", "TABLE controlled sources are not supported", 2),
    ("t\n.model Q2 NPN(BF=100\n+ IS=1f\n", "missing ')'", 2),
    ("t\n.model Q2 NPN(BF)\n", "bad parameter 'BF'", 2),
    ("t\n.param a={b} b={a}\n", "cycle: a -> b -> a", 2),
    ("t\nR1 a b\n+ 1k m=\n", "missing the value of m", 3),
    ("t\nR1 a b 1k\n+ foo=3\n", "R1: unknown parameter 'foo'", 3),
    ("t\n.func f(x) = {x*2}\nR1 a b {f(1,2)}\n", "f() takes 1 argument, got 2", 3),
    ("t\n.func f(x) = {g(x)}\n.func g(x) = {f(x)}\nR1 a b {f(1)}\n", "recursively", 4),
    ("t\nB1 a 0 V=sqrt(1,2)\n", "sqrt() takes 1 argument", 2),
    ("t\nR1 a 0 1\n.control\nop\n", "'.control' block has no '.endc'", 3),
    ("t\n.endc\n", "'.endc' without", 2),
    ("t\n.endl\n", "'.endl' without", 2),
    ("t\nQ1 c b e\n", "Q1: expected 'Q1 collector base emitter", 2),
    ("t\nD1 a k\n", "D1: missing model name", 2),
    ("t\nD1 a k NOSUCH\n", "model 'NOSUCH' is not defined", 2),
    ("t\nX1\n", "X1: missing subcircuit name", 2),
    ("t\nV1 a 0 1 2\n", "V1: unexpected '2'", 2),
    ("t\nV1 a 0 TRNOISE(1 2 3)\n", "waveform 'TRNOISE' is not supported", 2),
    ("t\n.param\n", "expected '.param name=value", 2),
    ("t\n.subckt S a\n.ends T\n", "'.ends T' does not close '.subckt S'", 3),
    ("t\nE1 a 0 b 0\n", "E1: expected 'E1 out+ out- ctrl+ ctrl- gain'", 2),
    ("t\nR1 a b 1k 2k\n", "R1: unexpected '2k'", 2),
    ("t\nB1 a 0 V={1 +* 2}\n", "found '*' in expression", 2),
    ("t\nB1 a 0 V={}\n", "empty expression", 2),
    ("t\nB1 a 0 V={V(a b)}\n", "bad V(...) argument", 2),
    ("t\nR1 a b 1k r=2k\n", "the resistance is given twice", 2),
    ("t\n.lib nothere.lib\n", "library file 'nothere.lib' not found", 2),
    ("t\n.subckt S 0 a\n.ends\n", "ground ('0') cannot be a port", 2),
    ("t\n.func sin(x) = {x}\n", "cannot redefine the built-in function 'sin'", 2),
    ("t\nR1 a b }\n", "unbalanced '}'", 2),
    ("t\nR1 a b 2*k\n", "bad value '2*k'", 2),
    ("t\nR41 a 0 1-3k-2\n", "bad value '1-3k-2'", 2),  # three numbers: ngspice 39 stops too
    ("t\nR41 a 0 2.2k-\n", "bad value '2.2k-'", 2),
    ("t\n.param x = 1 y\n", "expected name=value, found 'y'", 2),
]


@pytest.mark.parametrize("text, message, line", BAD, ids=[m for _, m, _ in BAD])
def test_bad_netlist(text: str, message: str, line: int) -> None:
    with pytest.raises(NetlistError) as info:
        parse_string(text, "bad.cir")
    err = info.value
    text_of_error = str(err)
    assert "\n" not in text_of_error
    assert text_of_error.startswith(f"bad.cir:{line}: "), text_of_error
    assert message in err.message, text_of_error
    assert err.loc is not None and (err.loc.file, err.loc.line) == ("bad.cir", line)
    assert text_of_error == f"{err.loc}: {err.message}"


# (netlist text, dialect, expected substring, line): what one dialect refuses that another reads
BAD_IN_DIALECT = [
    ("t\nV1 a 0 wavefile=di.wav\nR1 a 0 1k\n", "ngspice", "'wavefile=' is LTspice syntax", 2),
    ("t\n.subckt S a\n.ends\nX1 a S mu=2\n", "ngspice", "--dialect ltspice", 4),
    ("t\nR1 a 0 1k\n", "spectre", "unknown dialect 'spectre'", None),
]


@pytest.mark.parametrize("text, dialect, message, line", BAD_IN_DIALECT, ids=[m for *_, m, _ in BAD_IN_DIALECT])
def test_bad_in_dialect(text: str, dialect: str, message: str, line: int | None) -> None:
    with pytest.raises(NetlistError) as info:
        parse_string(text, "bad.cir", dialect=dialect)
    assert "\n" not in str(info.value) and message in info.value.message, str(info.value)
    if line is not None:
        assert str(info.value).startswith(f"bad.cir:{line}: "), str(info.value)


# (netlist text, expected substring, line): parsed fine, refused while building the circuit
BAD_CIRCUIT = [
    (
        "t\nV1 a 0 1\nD1 a 0 D1N4148\n.model D1N4148 D(Is=2.52n mfg=OnSemi)\n",
        "mfg=onsemi is a word, not a number or a .param; ngspice 39 stops here",
        4,
    ),
    ("t\nV1 a 0 1\nARV1 a w 0 P\nR1 w 0 1k\n.model P potentiometer(log=maybe)\n", "log must be true or false", 5),
    ("t\nV1 a 0 1\nARV1 a w 0 D1\nR1 w 0 1k\n.model D1 D(IS=1n)\n", "the only XSPICE code model supported", 3),
    ("t\nV1 a 0 1\nD1 a 0 P\n.model P potentiometer(r=1k)\n", "is an XSPICE potentiometer", 3),
    ("t\nV1 a 0 1\nR1 a b 1k\nF1 b 0 VX 2\n", "F1: controlling source VX is not", 4),
    ("t\nV1 a 0 1\nR1 a b 1k\nH1 c 0 R1 2\nR2 c 0 1k\n", "H1: controlling source R1 is not", 4),
    ("t\nV1 a 0 1\nR1 a 0 1k\n", "--set nope: no such .param or potentiometer", None),
]


@pytest.mark.parametrize("text, message, line", BAD_CIRCUIT, ids=[m for _, m, _ in BAD_CIRCUIT])
def test_bad_circuit(text: str, message: str, line: int | None) -> None:
    from circuitsim.circuit.build import build_circuit

    with pytest.raises(NetlistError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore", NetlistWarning)
        build_circuit(parse_string(text, "bad.cir"), {"nope": 1.0} if "--set" in message else None)
    assert "\n" not in str(info.value) and message in info.value.message, str(info.value)
    if line is not None:
        assert str(info.value).startswith(f"bad.cir:{line}: "), str(info.value)


def test_missing_include_names_the_file() -> None:
    text = "t\nR1 a 0 1\n.include models/nothere.inc\n"
    with pytest.raises(NetlistError, match="include file 'models/nothere.inc' not found") as info:
        parse_string(text, str(DATA / "virtual.cir"))
    assert str(info.value).startswith(f"{DATA / 'virtual.cir'}:3: ")


def test_include_cycle_names_the_chain() -> None:
    text = "t\n.include cycle_a.inc\n"
    with pytest.raises(NetlistError, match="include cycle") as info:
        parse_string(text, str(DATA / "virtual.cir"))
    err = info.value
    assert Path(err.loc.file).name == "cycle_b.inc" and err.loc.line == 2
    assert "cycle_a.inc -> " in err.message and err.message.endswith("cycle_a.inc")


def test_missing_library_section() -> None:
    with pytest.raises(NetlistError, match="library section 'TETRODES' not found in 'lib/tubes.lib'"):
        parse_string("t\n.lib lib/tubes.lib TETRODES\n", str(DATA / "virtual.cir"))


def test_error_inside_included_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "bad.inc").write_text("* fine\nR9 a b 1k\nR10 a\n")
    (tmp_path / "main.cir").write_text("title\n.include bad.inc\n")
    with pytest.raises(NetlistError) as info:
        parse_file(tmp_path / "main.cir")
    assert str(info.value).startswith(f"{tmp_path / 'bad.inc'}:3: R10: missing nodes")


def test_missing_netlist_file() -> None:
    with pytest.raises(NetlistError, match="netlist file 'no/such/file.cir' not found"):
        parse_file("no/such/file.cir")


VALID = """Fuzz base
.param rval=10k gain={2*rval}
.subckt 12AX7 P G K params: mu=100 ex=1.4 kg1=1060 kp=600 kvb=300
Be1 e1 0 V={V(P,K)/kp*ln(1+exp(kp*(1/mu+V(G,K)/sqrt(kvb+V(P,K)*V(P,K)))))}
Re1 e1 0 1G
Bp P K I={2*pwr(uramp(V(e1)),ex)/kg1}
Cgk G K 1.6p
.ends
.model 2N3904 NPN(Is=6.734f Xti=3 Eg=1.11 Vaf=74.03 Bf=416.4 Ne=1.259
+ Ise=6.734f Ikf=66.78m Xtb=1.5 Br=.7371 Nc=2 Tr=239.5n Tf=301.2p Itf=.4 Vtf=4 Xtf=2 Rb=10)
.model D1N914 D(Is=2.52n Rs=.568 N=1.752 Cjo=4p M=.4 tt=20n)
VIN in 0 DC 0 AC 1 SIN(0 1 1k)
R1 in b {rval} ; comment
C1 b 0 10n
E1 o 0 VALUE={V(b)*2 > 1 ? 1 : V(b)}
D1 o 0 D1N914 2
Q1 c b 0 2N3904
XV1 p g k 12AX7 mu=96
.tran 1u 1m
.end
"""


def test_mutated_netlists_raise_only_netlist_errors() -> None:
    """Random character edits of a valid netlist either parse or raise NetlistError (never a parser bug)."""
    rng = np.random.default_rng(0)
    alphabet = list("abcRCLXQD019.,=(){}'\"+-*/^ \n;$k") + ["µ", "\t"]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(600):
        chars = list(VALID)
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(0, len(chars)))
            op = rng.integers(0, 3)
            if op == 0:
                del chars[i]
            elif op == 1:
                chars.insert(i, str(rng.choice(alphabet)))
            else:
                chars[i] = str(rng.choice(alphabet))
        text = "".join(chars)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NetlistWarning)
                parse_string(text, "fuzz.cir")
            outcomes["ok"] += 1
        except NetlistError as err:
            assert "internal parser error" not in err.message, (text, err)
            assert "\n" not in str(err)
            outcomes["error"] += 1
    assert outcomes["ok"] > 0 and outcomes["error"] > 0
