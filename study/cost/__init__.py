"""The cost model: a configuration's estimated memory peak (``estimate``) and wall time
(``timing``), from what a trial computes (``workload``) and keeps for backward
(``activations``).

Imports the shared contracts and the one-trial package (``study.trial``), never the search or
Ray.
"""
