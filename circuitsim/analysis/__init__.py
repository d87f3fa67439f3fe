"""Audio analysis of a circuit: listenable output, small-signal response vs ngspice, distortion, aliasing.

- :mod:`circuitsim.analysis.output`: DC blocking, gain, normalisation, default oversampling, resampler latency;
- :mod:`circuitsim.analysis.smallsignal`: the frequency response at the DC operating point (``.ac``);
- :mod:`circuitsim.analysis.ngspice_ac`: ngspice's ``.ac`` as its reference;
- :mod:`circuitsim.analysis.distortion`: transfer curve, THD, aliasing, exponential sine sweep;
- :mod:`circuitsim.analysis.report`: the ``circuitsim analyze`` command's files (docs/analysis.md).
"""
