"""The Python API in a few lines: load a netlist, simulate, turn a knob, take a gradient.

Run from the repository root:  python3 examples/api_example.py
"""

from pathlib import Path

import torch

import circuitsim

ROOT = Path(__file__).resolve().parents[1]
FS = 48000 * 8  # simulate at 8x oversampling of 48 kHz

model = circuitsim.load(ROOT / "netlists" / "diode_clipper.cir", method="dk", sample_rate=FS)
print(model)
for name, p in model.named_parameters():
    print(f"  {name:<14} {float(p):.6g}  learnable={p.requires_grad}")

t = torch.arange(int(0.005 * FS), dtype=torch.float64) / FS
x = (0.8 * torch.sin(2 * torch.pi * 440 * t)).unsqueeze(0)  # (batch, time) input volts
y = model(x)
print(f"peak output {float(y.abs().max()):.4f} V for a 0.8 V sine")

# gradient of the output energy with respect to every component value (adjoint through the kernel)
(y**2).mean().backward()
for name, p in model.named_parameters():
    if p.grad is not None:
        print(f"  d(energy)/d({name}) = {float(p.grad):.4g}")
