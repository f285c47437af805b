"""The classify task's data: CSV / JSONL / parquet sources, label ids, stratified nested splits,
and one clear line (exit code 2, nothing written) for each kind of bad file."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from study.sections import DataConfig
from study.train_one import main as train_one
from study.trial.batches import collate
from study.trial.data import build_data
from study.trial.models import tiny_tokenizer
from study.trial.tasks.labelled import read_labelled, stratified_split

CLASSES = ["business", "science", "sports", "world"]


def _rows(n_per_class=30, labels=CLASSES):
    return [{"body": f"{label} story number {i} " + "word " * (i % 7), "topic": label}
            for i in range(n_per_class) for label in labels]


def _write(tmp_path, rows, suffix, text="body", label="topic"):
    frame = pd.DataFrame(rows).rename(columns={"body": text, "topic": label})
    path = tmp_path / f"news{suffix}"
    if suffix in (".csv", ".csv.gz"):
        frame.to_csv(path, index=False)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    else:
        frame.to_parquet(path)
    return path


def _cfg(path, **kw):
    return DataConfig(task="classify", source=str(path), text_column="body", label_column="topic",
                      eval_size=12, test_size=12, size=kw.pop("size", 40), seq_len=24, **kw)


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".jsonl", ".parquet"])
def test_each_format_gives_the_same_examples(tmp_path, suffix):
    path = _write(tmp_path, _rows(), suffix)
    data = build_data(_cfg(path), tiny_tokenizer(), cache_dir=tmp_path / "cache")
    assert data.info["labels"] == CLASSES
    assert sum(data.info["train_counts"].values()) == 40 == len(data.train)
    assert all(e.label in range(4) and 0 < len(e.input_ids) <= 24 for e in data.train)
    reference = _write(tmp_path / "..", _rows(), ".csv") if suffix != ".csv" else path
    same = build_data(_cfg(reference), tiny_tokenizer(), cache_dir=tmp_path / "cache2")
    assert [e.input_ids for e in data.test] == [e.input_ids for e in same.test]


def test_integer_labels_sort_numerically_and_custom_columns(tmp_path):
    rows = [{"body": f"text {i} {k} " * 3, "topic": k} for i in range(20) for k in (10, 2, 1)]
    texts, ids, names = read_labelled(str(_write(tmp_path, rows, ".jsonl")), "body", "topic")
    assert names == ["1", "2", "10"]  # numeric order, not "1" < "10" < "2"
    assert Counter(ids) == {0: 20, 1: 20, 2: 20} and len(texts) == 60
    csv_names = read_labelled(str(_write(tmp_path, rows, ".csv")), "body", "topic")[2]
    assert csv_names == names  # a CSV reads integers as text: the same ids


def test_splits_are_disjoint_stratified_and_nested(tmp_path):
    labels = [k for k, n in enumerate((90, 45, 30, 15)) for _ in range(n)]
    train, evals, test = stratified_split(labels, eval_size=36, test_size=36)
    assert not (set(train) & set(evals) or set(train) & set(test) or set(evals) & set(test))
    assert len(train) + len(evals) + len(test) == len(labels)
    for split in (evals, test):  # 36 of 180: each class gives a fifth
        assert Counter(labels[i] for i in split) == {0: 18, 1: 9, 2: 6, 3: 3}
    for n in (20, 50, 100):  # every prefix (a data.size) keeps the class shares
        counts = Counter(labels[i] for i in train[:n])
        for k, total in enumerate((90, 45, 30, 15)):
            assert abs(counts[k] - n * total / 180) <= 1
    assert stratified_split(labels, 36, 36) == (train, evals, test)  # fixed: no trial seed


def test_sizes_are_nested_prefixes_and_batches_pad_to_their_longest(tmp_path):
    path = _write(tmp_path, _rows(), ".csv")
    small = build_data(_cfg(path, size=16), tiny_tokenizer(), cache_dir=tmp_path / "c")
    large = build_data(_cfg(path, size=80), tiny_tokenizer(), cache_dir=tmp_path / "c")
    assert [e.input_ids for e in small.train] == [e.input_ids for e in large.train[:16]]
    batch = collate(small.train[:4], pad_id=0)
    assert batch["input_ids"].shape[1] == max(len(e.input_ids) for e in small.train[:4])
    assert batch["class_labels"].tolist() == [e.label for e in small.train[:4]]


def _text(directory, content):
    (directory / "news.csv").write_text(content)
    return directory / "news.csv"


BAD = {
    "missing column": (lambda p: _write(p, _rows(), ".csv", label="category"),
                       "has no column 'topic'"),
    "empty file": (lambda p: _text(p, ""), "is empty"),
    "header only": (lambda p: _text(p, "body,topic\n"), "has no rows"),
    "single class": (lambda p: _write(p, _rows(labels=["world"]), ".csv"), "a single label"),
    # 12 of 132 examples: one each in eval and test, none among the first 4 training ones
    "class absent from train": (lambda p: _write(p, _rows() + _rows(12, ["zoo"]), ".csv"),
                                "leaves label 'zoo' out of the training examples"),
    "empty text": (lambda p: _write(p, _rows() + [{"body": "", "topic": "world"}], ".csv"),
                   "empty text or label"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sources_give_one_line_exit_2_and_no_directory(tmp_path, capsys, case):
    make, message = BAD[case]
    path = make(tmp_path)
    size = 4 if "absent" in case else 40
    with pytest.raises(ValueError, match=message):
        build_data(_cfg(path, size=size), tiny_tokenizer(), cache_dir=tmp_path / "cache")
    out = tmp_path / "trial"
    code = train_one(["--model", "tiny-llama", "--task", "classify", "--source", str(path),
                      "--data.text_column", "body", "--data.label_column", "topic",
                      "--size", str(size), "--data.eval_size", "12", "--data.test_size", "12",
                      "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_a_size_that_leaves_a_class_out_is_refused(tmp_path):
    rows = _rows(n_per_class=40, labels=["a", "b"]) + _rows(n_per_class=8, labels=["c"])
    path = _write(tmp_path, rows, ".csv")
    with pytest.raises(ValueError, match="leaves label 'c' out"):
        build_data(_cfg(path, size=2), tiny_tokenizer(), cache_dir=tmp_path / "cache")


def test_ag_news_goes_through_datasets_and_keeps_its_class_names(monkeypatch):
    """The hub path offline: datasets.load_dataset answers with a local set of AG News's shape
    (text, and a ClassLabel of 4 names stored as ids), train and test splits."""
    datasets = pytest.importorskip("datasets")
    names = ["World", "Sports", "Business", "Sci/Tech"]
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=names)})

    def split(n, name):
        return datasets.Dataset.from_dict(
            {"text": [f"{name} story {i}" for i in range(n)], "label": [i % 4 for i in range(n)]},
            features=features)

    asked = []

    def load_dataset(path, *args, **kwargs):
        asked.append(path)
        return datasets.DatasetDict({"train": split(40, "train"), "test": split(8, "test")})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    texts, ids, labels = read_labelled("ag_news")
    assert asked == ["fancyzhx/ag_news"] and len(texts) == 48
    assert labels == sorted(names)  # the names, not the stored ids
    assert [labels[i] for i in ids[:4]] == names  # row k has class k % 4


def test_an_unreachable_hub_is_one_line(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'fancyzhx/ag_news' on the Hub (LocalEntryNotFound)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="could not load ag_news .* through datasets: Couldn't"):
        read_labelled("ag_news")


def test_a_csv_with_a_bom_reads_and_one_not_in_utf8_is_one_line(tmp_path):
    rows = "text,label\n" + "".join(f"новость {i},{'abc'[i % 3]}\n" for i in range(30))
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + rows.encode())
    assert read_labelled(str(tmp_path / "bom.csv"))[2] == ["a", "b", "c"]
    (tmp_path / "cp1251.csv").write_bytes(rows.encode("cp1251"))
    with pytest.raises(ValueError, match="is not UTF-8 text .*: save it as UTF-8"):
        read_labelled(str(tmp_path / "cp1251.csv"))


def test_missing_values_of_nullable_parquet_columns_are_empty_not_text(tmp_path):
    frame = pd.DataFrame({"text": [f"a {i}" if i % 3 != 1 else None for i in range(30)],
                          "label": [1, 2, 10] * 10})
    frame = frame.convert_dtypes()  # string and Int64: missing values read back as pd.NA
    frame.loc[3, "label"] = pd.NA  # a row whose text is there
    frame.to_parquet(tmp_path / "n.parquet")
    with pytest.raises(ValueError, match="11 rows have an empty text or label .*row 2\\)"):
        read_labelled(str(tmp_path / "n.parquet"))
    frame.dropna().to_parquet(tmp_path / "ok.parquet")
    assert read_labelled(str(tmp_path / "ok.parquet"))[2] == ["1", "10"]  # Int64 stays numeric


def test_a_repeated_text_is_kept_once(tmp_path):
    rows = [{"body": f"story {i % 25}", "topic": "ab"[i % 2]} for i in range(60)]
    texts, ids, _ = read_labelled(str(_write(tmp_path, rows, ".csv")), "body", "topic")
    assert len(texts) == len(set(texts)) == 25  # first label wins: story k is "ab"[k % 2]
    assert ids == [k % 2 for k in range(25)]
