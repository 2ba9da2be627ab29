"""The toy world: procedural 32x32 scenes with class masks, and small models trained on them.

It is the embedded default that lets ganscale run anywhere offline: the demo study, the tests and
the benchmarks all use it.
"""
