"""A results table made by any tool (one row per run) as a :class:`analysis.design.Design`.

    python -m analysis report --table runs.csv --factors rank,bits,targets \\
        --quality accuracy:max,f1 --resources peak_gb:min,train_time --replicate seed --out rep/

Every problem is a ValueError with one line naming the column or row and what is allowed; the
CLI prints it and exits with code 2 before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.design import Design, find_baselines, level_order, whole_numbers
from study import metrics as M


def parse_metrics(text: str | None, flag: str, default_max: bool) -> dict[str, bool]:
    """``COL[:max|:min],...`` -> {column: larger is better}. Without a direction, a metric this
    project knows keeps its own (accuracy: max, eval_loss: min); others take ``default_max``."""
    out: dict[str, bool] = {}
    for item in (text or "").split(","):
        name, _, way = item.strip().partition(":")
        if not name:
            continue
        if way not in ("", "max", "min"):
            raise ValueError(f"{flag}: {item.strip()!r} must be COLUMN, COLUMN:max or COLUMN:min")
        known = M.mode(name) == "max" if name in (*M.QUALITY, *M.RESOURCES) else default_max
        out[name] = way == "max" if way else known
    return out


def parse_names(text: str | None) -> list[str]:
    """``A,B,...`` -> names, blanks dropped."""
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def parse_interactions(text: str | None, factors: list[str]) -> list[tuple[str, ...]]:
    """``A:B,C:D`` -> [(A, B), (C, D)]; each name must be a factor."""
    terms = []
    for item in parse_names(text):
        names = tuple(n.strip() for n in item.split(":"))
        unknown = [n for n in names if n not in factors]
        if len(names) < 2 or unknown:
            raise ValueError(
                f"--interactions: {item!r} must name two or more factors joined by ':' (the "
                f"factors: {', '.join(factors) or 'none'})"
            )
        terms.append(names)
    return terms


def read_table(path: Path) -> pd.DataFrame:
    """The CSV as text columns (numbers are converted where a column is a metric)."""
    if not path.is_file():
        raise ValueError(f"--table {path}: no such file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0]
        raise ValueError(f"--table {path}: not a readable CSV ({first})") from None
    if frame.empty:
        raise ValueError(f"--table {path}: no rows")
    return frame


def _numeric(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = frame[column].notna() & values.isna()
    if bad.any():
        row = int(bad.idxmax())
        raise ValueError(
            f"--table {path}: column {column!r} is not numeric (row {row + 2} of the file has "
            f"{frame[column][row]!r}); quality and resource columns must be numbers"
        )
    return values


def _factor_values(series: pd.Series) -> pd.Series:
    """Numbers where every value is one (so levels sort as numbers), text otherwise."""
    numbers = pd.to_numeric(series, errors="coerce")
    if (series.notna() == numbers.notna()).all():
        return whole_numbers(numbers)  # "32.0" (a column with a blank) is rank 32
    return series.astype(object).where(series.notna(), None)


def from_table(
    path: Path,
    factors: list[str],
    quality: dict[str, bool],
    resources: dict[str, bool],
    replicate: str | None = None,
    data_size: str | None = None,
) -> Design:
    """Read and check ``path``; the runs as a Design (``config``: the factors' values)."""
    if not factors:
        raise ValueError("--factors: name at least one column")
    if not quality:
        raise ValueError("--quality: name at least one column, as COLUMN[:max|:min]")
    frame = read_table(path)
    if data_size and data_size not in factors:
        factors = [*factors, data_size]
    named = [*factors, *quality, *resources, *([replicate] if replicate else [])]
    for column in dict.fromkeys(named):
        if column not in frame.columns:
            raise ValueError(
                f"--table {path}: no column {column!r}; the table has {', '.join(frame.columns)}"
            )
    clash = set(factors) & (set(quality) | set(resources))
    if clash:
        raise ValueError(f"{sorted(clash)[0]!r} is named both as a factor and as a metric")
    runs = pd.DataFrame({f: _factor_values(frame[f]) for f in factors})
    for column in (*quality, *resources):
        runs[column] = _numeric(frame, column, path)
    identity = [*factors, *([replicate] if replicate else [])]
    keys = frame[identity].fillna("\0")
    twins = keys.duplicated(keep=False)
    if twins.any():
        rows = [int(i) + 2 for i in keys.index[twins][:2]]
        hint = ("give --replicate COLUMN naming the column that tells repeated runs apart"
                if not replicate else f"{replicate!r} does not tell them apart")
        raise ValueError(
            f"--table {path}: rows {rows[0]} and {rows[1]} have the same "
            f"{', '.join(identity)}: two runs that cannot be told apart; {hint}"
        )
    runs["config"] = keys[factors].apply(lambda r: "|".join(r), axis=1)
    runs["replicate"] = frame[replicate].fillna("") if replicate else 0
    # a factor that does not apply to a run (a baseline's rank) is left out of its label
    runs["label"] = [", ".join(f"{f} {v}" for f, v in zip(factors, row) if v is not None)
                     for row in runs[factors].itertuples(index=False)]
    runs["command"] = None
    runs["study"], runs["trial"] = path.stem, [str(i + 2) for i in range(len(runs))]
    return Design(
        runs=runs,
        factors=list(factors),
        quality=quality,
        resources=resources,
        orders={f: level_order(runs[f].tolist()) for f in factors},
        data_size=data_size,
        source=path.name,
        baselines=find_baselines(runs, factors),
    )
