*Common Drain (Source Follower) – Transient Analysis
* Source: https://github.com/VedasriJ/ltspice-analog-design/blob/5289f8e85e3f4f3946c67c99b75a0903c0ff1e99/opamps/common_drain/LTspice/netlist/CD_transient.sp

Vsig a 0 SIN(0 20m 1k)
Rsig a vi 1k
Cc1 vi g 1u

VDD d 0 DC 1.8
VSS vss 0 DC -1.8

Rg g 0 1Meg
I1 s vss DC 200u

M1 d g s s nmos W=10u L=0.18u

Cc2 s vo 1u
RL vo 0 10k

.model nmos NMOS

.tran 0 5m 0 1u

.end
