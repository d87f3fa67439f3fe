"""Make the figures and the aliasing table of docs/analysis.md (and the README's two images).

    python examples/make_analysis_figures.py [--out docs]

Writes OUT/bode.png (netlists/ts808.cir's small-signal response at three tone settings,
ngspice's .ac dashed over it when ngspice is installed) and OUT/aliasing.png (a 1 V, 1245 Hz
sine through the diode clipper, the TS-808 clipping stage and the whole pedal at 1x..16x
oversampling), and prints the aliasing table in Markdown.  About a minute on one core.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from circuitsim.analysis.distortion import aliasing_report
from circuitsim.analysis.report import aliasing_table, plot_aliasing, plot_bode
from circuitsim.analysis.smallsignal import ac_response, log_frequencies
from circuitsim.spice import ngspice_available

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    pedal = ROOT / "netlists" / "ts808.cir"
    curves, refs = [], []
    for tone in (0.1, 0.5, 0.9):
        params = {"tone": tone, "drive": 0.5, "level": 0.5}
        c = ac_response(pedal, log_frequencies(), params=params)
        c.label = f"tone = {tone:g}"
        curves.append(c)
        if ngspice_available():
            from circuitsim.analysis.ngspice_ac import ac_ngspice

            ref = ac_ngspice(pedal, params=params)
            db, deg = ac_response(pedal, ref.frequency_hz, params=params).difference(ref)
            print(f"ts808.cir tone={tone:g}: largest difference to ngspice .ac {db:.1e} dB, {deg:.1e} deg")
            refs.append(ref)
    plot_bode(args.out / "bode.png", curves, "ts808.cir (drive 0.5, level 0.5): small-signal response at the DC point"
              + ("\nngspice .ac dashed" if refs else ""), refs)

    results = {}
    for name in ("diode_clipper", "ts808_clipping", "ts808"):
        results[name] = aliasing_report(ROOT / "netlists" / f"{name}.cir")
        print(f"\n{name}\n\n{aliasing_table(results[name])}")
    plot_aliasing(args.out / "aliasing.png", results)
    print(f"\nwrote {args.out / 'bode.png'} and {args.out / 'aliasing.png'}")


if __name__ == "__main__":
    main()
