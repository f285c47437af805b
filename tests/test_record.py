"""study.record, the owner of the trial and study directories: atomic writes, damaged files."""

from __future__ import annotations

import os
import stat

import pytest

from study import record


def test_a_write_is_whole_or_absent_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    record.write_metrics(tmp_path, {"step": 1})
    real_fsync = os.fsync

    def crash(fd):  # the process dies after writing the bytes, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        record.write_metrics(tmp_path, {"step": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert record.read_metrics(tmp_path) == {"step": 1}  # the old file, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [record.METRICS]


def test_files_get_the_usual_permissions_not_the_private_ones_of_a_temp_file(tmp_path):
    old = os.umask(0o022)
    try:
        record.write_status(tmp_path, record.RUNNING)
        record.write_curve(tmp_path, [{"step": 1}])
    finally:
        os.umask(old)
    for name in (record.STATUS, record.CURVE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"step": 3, "eval_loss": 0.5', "truncated"),
        ('{"step": 3, "name": "cut in a str', "truncated"),
        ('{"step": 3,, "eval_loss": 1}', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_damaged_json_is_named_with_its_problem(tmp_path, text, problem):
    (tmp_path / record.METRICS).write_text(text)
    with pytest.raises(record.RecordError) as err:
        record.read_metrics(tmp_path)
    assert err.value.problem == problem and str(err.value).startswith(str(tmp_path))


def test_every_cut_of_a_written_record_reads_as_truncated(tmp_path):
    """A crash can stop a write at any byte: inside a number (``0.``), an exponent (``1e-``), a
    literal (``tr``, ``Na``), a key or a string. Every such prefix is named "truncated"."""
    metrics = {
        "eval_loss": 0.1234,
        "peak_mem_mb": 1.5e-05,
        "ok": True,
        "none": None,
        "nan": float("nan"),
        "neg": -2.0,
        "name": "a b",
        "nested": {"x": [1, 2.5]},
    }
    record.write_metrics(tmp_path, metrics)
    text = (tmp_path / record.METRICS).read_text()
    for cut in range(1, len(text.rstrip())):
        (tmp_path / record.METRICS).write_text(text[:cut])
        with pytest.raises(record.RecordError) as err:
            record.read_metrics(tmp_path)
        assert err.value.problem == "truncated", repr(text[:cut])


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(record.RecordError, match="missing"):
        record.read_config(tmp_path)
    (tmp_path / record.CONFIG).mkdir()
    with pytest.raises(record.RecordError, match="unreadable"):
        record.read_config(tmp_path)
    assert record.read_status(tmp_path) == {}  # absent: unknown, no error
    (tmp_path / record.CURVE).mkdir()
    with pytest.raises(record.RecordError, match="unreadable"):
        record.read_curve(tmp_path)


def test_a_half_written_last_curve_line_is_reported_and_the_rest_kept(tmp_path):
    record.write_curve(tmp_path, [{"step": 2, "eval_loss": 1.0}, {"step": 4, "eval_loss": 0.5}])
    with open(tmp_path / record.CURVE, "a") as f:
        f.write('{"step": 6, "eval_lo')  # what a kill during an append leaves
    points, bad = record.read_curve(tmp_path)
    assert [p["step"] for p in points] == [2, 4] and bad == [3]


def test_a_line_separator_inside_a_value_does_not_split_a_curve_line(tmp_path):
    (tmp_path / record.CURVE).write_text('{"step": 1, "note": "a\u2028b"}\n')
    assert record.read_curve(tmp_path) == ([{"step": 1, "note": "a\u2028b"}], [])


def test_status_values_are_checked_and_finished_ness_is_explicit(tmp_path):
    with pytest.raises(ValueError, match="status must be one of"):
        record.write_status(tmp_path, "done")
    assert record.is_final({"final": True}) and not record.is_final({"test_loss": 1.0})


def test_trial_dirs_list_trials_of_a_group_only(tmp_path):
    for name in ("b", "a", ".hidden"):
        (record.group_dir(tmp_path, record.SEARCH) / name).mkdir(parents=True)
    (record.group_dir(tmp_path, record.SEARCH) / "stray-file").write_text("")
    assert [d.name for d in record.trial_dirs(tmp_path, record.SEARCH)] == ["a", "b"]
    assert record.trial_dirs(tmp_path, record.BASELINES) == []
    with pytest.raises(ValueError, match="group must be one of"):
        record.group_dir(tmp_path, "other")
