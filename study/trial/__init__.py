"""One trial: model, data, the training loop, quality and resource metrics (``run.run_trial``).

Imports the shared contracts of ``study`` (config, record, metrics) and ``lora_impl``; never the
search (``study.search``), the cost model (``study.cost``) or Ray
(``tests/test_architecture.py``).
"""
