"""Compiled per-sample kernels (numba) and their autograd wrappers; no circuit knowledge here."""
