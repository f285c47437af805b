"""Labelled text for the classify task: the sources, the label ids, the stratified splits.

    texts, labels, names = read_labelled("news.csv", "text", "label")   # labels: ids into names
    train, evals, test = stratified_split(labels, eval_size=150, test_size=150)

Sources: ``builtin`` (the docstrings of Python's standard library labelled by the area of their
module, a frozen file in ``study/trial/tasks/data``: see its README), ``ag_news`` (AG News through
``datasets``: needs the hub) or a local ``.csv`` / ``.csv.gz`` / ``.jsonl`` / ``.parquet`` file
with a text and a label column. Labels may be strings or integers; their ids follow the sorted
order of the distinct labels (numeric for integers), so ``0 < 1 < 10`` and ``"a" < "b"``.

The splits are stratified and do not depend on the trial seed: each class is shuffled with a
fixed seed and gives its share of the test and eval splits, the rest is training data. Every
split is ordered so that each prefix keeps the class proportions: ``data.size`` takes a prefix,
so smaller training sets are stratified subsets of larger ones (nested).
"""

from __future__ import annotations

import math
import random
import re
from importlib import resources

from study.trial.tasks.text import DataSourceError, local_file

HUB = {"ag_news": "fancyzhx/ag_news"}
BUILTIN = "stdlib_docs.csv.gz"
SPLIT_SEED = 1234
SUFFIXES = (".csv", ".csv.gz", ".jsonl", ".parquet")


def read_table(source: str, what: str = "classify source"):
    """The source as a pandas DataFrame (hub sets: their train and test splits together);
    ``what`` names it in errors."""
    import pandas as pd

    if source == "builtin":
        with resources.as_file(resources.files("study.trial.tasks") / "data" / BUILTIN) as path:
            return pd.read_csv(path, keep_default_na=False)
    if source in HUB:
        return _hub_frame(source)
    path = local_file(source)
    name = path.name.lower()
    if not name.endswith(SUFFIXES):
        raise DataSourceError(
            f"{what} {source!r}: use a {', '.join(SUFFIXES)} file, builtin or "
            f"{', '.join(HUB)}"
        )
    try:
        if name.endswith((".csv", ".csv.gz")):
            # empty cells stay "" (not NaN): an empty text or label is reported as such
            return pd.read_csv(path, keep_default_na=False, dtype=str, encoding="utf-8-sig")
        if name.endswith(".jsonl"):
            return pd.read_json(path, lines=True, dtype=False)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataSourceError(f"{what} {source!r} is empty") from None
    except UnicodeDecodeError as err:  # e.g. a cp1251 CSV: say what to do, not only the byte
        raise DataSourceError(f"{what} {source!r} is not UTF-8 text ({err.reason} at "
                              f"byte {err.start}): save it as UTF-8") from None
    except (ValueError, OSError, ImportError, pd.errors.ParserError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataSourceError(f"{what} {source!r} cannot be read: {first}") from None


def _hub_frame(source: str):
    import pandas as pd

    try:
        import datasets

        parts = datasets.load_dataset(HUB[source])
        frames = []
        for split in ("train", "test"):
            frame = parts[split].to_pandas()
            names = getattr(parts[split].features.get("label"), "names", None)
            if names:  # AG News stores ids: keep its class names (World, Sports, ...)
                frame["label"] = [names[i] for i in frame["label"]]
            frames.append(frame)
    except Exception as err:  # datasets raises many types for offline / missing
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataSourceError(f"could not load {source} ({HUB[source]}) through datasets: "
                              f"{first}") from None
    return pd.concat(frames, ignore_index=True)


def _label_key(values: list) -> list:
    """The labels as ids would sort them: integers numerically, anything else as text."""
    def integral(v) -> bool:
        if isinstance(v, bool):
            return False
        if isinstance(v, int):
            return True
        if isinstance(v, float):
            return v.is_integer()
        return isinstance(v, str) and re.fullmatch(r"-?[0-9]+", v.strip()) is not None

    if all(integral(v) for v in values):
        return [int(float(v)) if not isinstance(v, str) else int(v.strip()) for v in values]
    return [str(v) for v in values]


def read_labelled(source: str, text_column: str = "text", label_column: str = "label",
                  ) -> tuple[list[str], list[int], list[str]]:
    """(texts, label ids, label names in id order) of a classify source; a repeated text keeps
    its first row.

    Raises:
        DataSourceError: a missing or unreadable file, a missing column, no rows, an empty text
            or label, fewer than two classes (the message names which and what is allowed).
    """
    frame = read_table(source)
    if frame.empty:
        raise DataSourceError(f"classify source {source!r} has no rows")
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        which = " and ".join(f"data.{k}_column={c!r}" for k, c in
                             zip(("text", "label"), (text_column, label_column)) if c in missing)
        raise DataSourceError(
            f"classify source {source!r} has no column {', '.join(map(repr, missing))} "
            f"({which}); its columns: {', '.join(map(str, frame.columns))}"
        )
    texts, raw = frame[text_column].tolist(), frame[label_column].tolist()
    bad = [i for i, (t, y) in enumerate(zip(texts, raw)) if blank(t) or blank(y)]
    if bad:
        raise DataSourceError(
            f"classify source {source!r}: {len(bad)} rows have an empty text or label "
            f"(first: data row {bad[0] + 1}); remove them or fill them in"
        )
    keys = _label_key(raw)
    names = sorted(set(keys))
    if len(names) < 2:
        raise DataSourceError(
            f"classify source {source!r} has a single label ({names[0]!r}) in column "
            f"{label_column!r}: a classifier needs at least two"
        )
    ids = {name: i for i, name in enumerate(names)}
    # One example per text (the first): a text repeated in train and test (AG News has some)
    # would make the held-out split not held out
    first: dict[str, int] = {}
    for text, key in zip(map(str, texts), keys):
        first.setdefault(text, ids[key])
    return list(first), list(first.values()), [str(n) for n in names]


def blank(value) -> bool:
    """None, NaN, pandas' NA (nullable dtypes of a parquet file), or only whitespace."""
    import pandas as pd

    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or mapping: not missing
        return False


def _interleave(groups: dict[int, list[int]]) -> list[int]:
    """The members of every class in one order whose every prefix keeps the class shares: the
    j-th of a class with n members at position (j + 0.5) / n (ties: the class id)."""
    keyed = [((j + 0.5) / len(members), label, idx)
             for label, members in groups.items() for j, idx in enumerate(members)]
    return [idx for _, _, idx in sorted(keyed)]


def _shares(counts: dict[int, int], total: int) -> dict[int, int]:
    """``total`` split over the classes in proportion to ``counts`` (largest remainder)."""
    n = sum(counts.values())
    exact = {k: total * c / n for k, c in counts.items()}
    share = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (share[k] - exact[k], k))[: total - sum(share.values())]:
        share[k] += 1
    return share


def stratified_split(labels: list[int], eval_size: int, test_size: int,
                     ) -> tuple[list[int], list[int], list[int]]:
    """(train, eval, test) example indices: disjoint, stratified, each in prefix-stratified order.

    Raises:
        DataSourceError: fewer examples than the eval and test splits and one training example.
    """
    need = eval_size + test_size + 1
    if len(labels) < need:
        raise DataSourceError(
            f"the classify source has {len(labels)} examples; data.eval_size + data.test_size "
            f"+ 1 = {need} are needed"
        )
    rng = random.Random(SPLIT_SEED)
    groups: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        groups.setdefault(y, []).append(i)
    for members in groups.values():
        rng.shuffle(members)
    counts = {k: len(v) for k, v in groups.items()}
    test_n = _shares(counts, test_size)
    eval_n = _shares({k: counts[k] - test_n[k] for k in counts}, eval_size)
    test = {k: v[: test_n[k]] for k, v in groups.items()}
    evals = {k: v[test_n[k] : test_n[k] + eval_n[k]] for k, v in groups.items()}
    train = {k: v[test_n[k] + eval_n[k] :] for k, v in groups.items()}
    return _interleave(train), _interleave(evals), _interleave(test)


def missing_classes(subset: list[int], labels: list[int], names: list[str]) -> list[str]:
    """Names of the classes of ``labels`` that ``subset`` (label ids) lacks."""
    have = set(subset)
    return [names[k] for k in sorted(set(labels)) if k not in have]

