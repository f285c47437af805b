"""Reads study result directories; never imports torch or ray, never unpickles.

    python -m analysis report results/demo      # report.html, figures, trials.csv
    from analysis.load import load_studies      # the tables, for your own analysis

load.py (directories -> tables), pareto.py (numpy Pareto masks, ranks, hypervolume), select.py
(fronts, best under a budget), plots.py (what each figure shows), render.py (matplotlib),
report.py (the HTML report), anytime.py (searchers' best-so-far quality against compute spent,
for bench/search_efficiency.py).
"""
