* Source: https://github.com/pl215364731/Patrick_Liang_Portfolio
* Patrick_Liang_Portfolio/School_Work/ece341/lab3/2n4401.mod (commit 10a692b45a4991bfcb694c899e74325907353130)
* Fairchild 2N4401
.model 2N4401  NPN 
+               (Is=26.03f Xti=3 Eg=1.11 Vaf=90.7 Bf=4.292K Ne=1.244
+               Ise=26.03f Ikf=.2061 Xtb=1.5 Br=1.01 Nc=2 Isc=0 Ikr=0 Rc=.5
+               Cjc=11.01p Mjc=.3763 Vjc=.75 Fc=.5 Cje=24.07p Mje=.3641 Vje=.75
+               Tr=233.7n Tf=466.5p Itf=0 Vtf=0 Xtf=0 Rb=10)
