"""LoRA studies: one trial, many trials and the cost model, each in its own package.

- shared contracts, here at the top: the config (``sections``, ``config``, ``fields``), the
  trial and study directories (``record``, ``files``, ``journal``, ``outdir``), metric names
  (``metrics``) and the command-line helpers (``cli``);
- ``study.trial``: one trial (no Ray, nothing of the search or the cost model);
- ``study.cost``: memory and time estimates;
- ``study.search``: many trials (Optuna, ASHA, Ray Tune);
- the ``python -m`` entry points: ``tune``, ``train_one``, ``reproduce``, ``export`` and
  ``forkserver`` (the fork server the study's driver starts).
"""
