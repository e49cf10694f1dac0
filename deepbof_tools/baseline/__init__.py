"""The MFCC baseline (``deepbof-baseline``): MFCC statistics + logistic regression.

Tooling, apart from the model library: a reference point for the demo's table, not a
part of the Deep-BoF model.
"""
