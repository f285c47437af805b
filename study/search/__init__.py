"""Many trials: the study's options and plan, the Optuna searcher, ASHA, replicates, resume, and
the Ray wiring (``tuner``, ``searcher``, ``asha``, ``callbacks``, ``trainable``: the only
modules of the project that import Ray).

Imports the shared contracts, the one-trial package and the cost model.
"""
