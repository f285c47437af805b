"""Reads study result directories; never imports torch or ray, never unpickles.

    python -m analysis report results/demo      # report.html, figures, trials.csv
    from analysis.load import load_studies      # the tables, for your own analysis

load.py (directories -> tables, read through study.record), trial_row.py (one trial directory ->
its row and curve points), result_files.py (one result file, a warning when damaged), pareto.py
(numpy Pareto masks, ranks, hypervolume), selection.py (fronts, best under a budget, labels),
figure_data.py (what each figure shows), render.py (matplotlib), classify.py (a classify study's
confusion matrices), tables.py (a report's tables as values), page.py and templates/ (the page,
rendered by jinja2 with autoescape), answer_report.py (the leading sections and Pareto panels),
report.py (a study's report), table_report.py (an external table's report), summary.py (the
end-of-study summary that python -m study.tune prints), anytime.py (searchers' best-so-far quality
against compute spent, for bench/search_efficiency.py).
"""
