"""The cases of bench/chaos.py: ways to damage a finished study, and bad command lines.

Each damage kind is (name, function(study) -> the path a warning must name); each bad input is
(case, argv) run in an empty working directory of its own. Nothing here runs anything.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from study import record
from study.fields import config_fields

PY = sys.executable
M, C, S, CU, E, J = (record.METRICS, record.CONFIG, record.STATUS, record.CURVE, record.EXAMPLES,
                     record.OPTUNA)


# --- damage: what a crash, a full disk or a careless hand leaves in a finished study ----------


def _finished(study: Path, k: int = 0) -> Path:
    done = [
        d
        for d in record.trial_dirs(study, record.SEARCH)
        if record.read_status(d).get("status") == record.FINISHED
    ]
    return done[k % len(done)]


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _append(path: Path, data: bytes) -> Path:
    with path.open("ab") as f:
        f.write(data)
    return path


def _replace_by_dir(path: Path) -> Path:
    path.unlink()
    path.mkdir()
    return path


def _delete_trial(study: Path) -> Path:
    trial = _finished(study)
    shutil.rmtree(trial)
    return trial


def _journal_inside(study: Path) -> Path:
    path = study / J
    lines = path.read_bytes().splitlines(keepends=True)
    return _write(path, b"".join(lines[:3] + [b"\x00\xff not an entry\n"] + lines[3:]))


def _file_for_trial(study: Path) -> Path:
    trial = _finished(study, 1)
    shutil.rmtree(trial)
    trial.write_text("not a directory")
    return trial


DAMAGE = [
    (f"{M} cut in half", lambda s: _truncate(_finished(s) / M)),
    (f"{M} empty", lambda s: _write(_finished(s) / M, b"")),
    (f"{M} binary", lambda s: _write(_finished(s) / M, b"\x00\x86\xff")),
    (f"{M} a list", lambda s: _write(_finished(s) / M, b"[1, 2]")),
    (f"{M} a directory", lambda s: _replace_by_dir(_finished(s) / M)),
    (f"{C} cut in half", lambda s: _truncate(_finished(s) / C)),
    (f"{C} binary", lambda s: _write(_finished(s) / C, b"\x89PNG\r\n\x1a")),
    (f"{S} deleted", lambda s: _unlink(_finished(s) / S)),
    (f"{S} garbage", lambda s: _write(_finished(s) / S, b"{status: ?")),
    (f"{S} unknown status", lambda s: _write(_finished(s) / S, b'{"status": "exploded"}')),
    (f"{CU} torn last line", lambda s: _append(_finished(s) / CU, b'{"step": 9, "eval_lo')),
    (f"{CU} binary line", lambda s: _append(_finished(s) / CU, b"\x00\xff\n")),
    (f"{CU} step not a number", lambda s: _append(
        _finished(s) / CU, b'{"step": "x", "eval_loss": 1}\n')),
    (f"{E} binary", lambda s: _write(_finished(s) / E, b"\x00\x86\xff")),
    (f"{E} not a list", lambda s: _write(_finished(s) / E, b'{"a": 1}')),
    ("a trial directory deleted", _delete_trial),
    ("a trial directory replaced by a file", _file_for_trial),
    (f"{J} torn last entry", lambda s: _append(s / J, b'{"op_code": 4')),
    (f"{J} garbage inside", _journal_inside),
    (f"{record.STUDY} cut in half", lambda s: _truncate(s / record.STUDY)),
]


def _unlink(path: Path) -> Path:
    path.unlink()
    return path


# --- bad input: every command line tool, every kind of nonsense --------------------------------


def _field_cases(prefix: list[str], how: str) -> list[tuple[str, list[str]]]:
    """A bad value for every config field: as ``--KEY VALUE`` (train_one) or ``--set K=V``."""
    out = []
    for f in config_fields():
        if f.kind is bool:
            values = ["maybe"]
        elif f.kind is str:
            values = ["no-such-value"] if f.key != "data.source" else ["missing-file.txt"]
        elif f.key == "seed":
            values = ["abc", "1.5"]
        else:
            values = ["abc", "-1"] + (["nan", "inf"] if f.kind is float else ["1.5"])
        for value in values:
            extra = ["--set", "data.task=lm"] if f.key == "data.source" else []
            if how == "flag":
                extra = ["--task", "lm"] if f.key == "data.source" else []
                args = [f"--{f.key}", value, *extra]
            else:
                args = [*extra, "--set", f"{f.key}={value}"]
            out.append((f"{how} {f.key}={value}", [*prefix, *args]))
    return out


def bad_inputs(study: Path) -> tuple[list[tuple[str, list[str]]], dict[str, str]]:
    """((case, argv) for every CLI, the space files they name); ``study`` is a finished study
    (its trials are the targets of export, reproduce and analysis)."""
    trial = str(_finished(study))
    base = str(record.group_dir(study, record.BASELINES) / "base")
    full = str(record.group_dir(study, record.BASELINES) / "full")
    tune = [PY, "-m", "study.tune", "--space", "smoke", "--storage-path", "res"]
    train = [PY, "-m", "study.train_one", "--model", "tiny-llama", "--steps", "2", "--size", "16"]
    train += ["--eval-every", "2", "--out", "out"]
    analysis = [PY, "-m", "analysis"]
    cases = _field_cases(train, "flag") + _field_cases(tune, "set")
    space_files = {
        "inf.yaml": "train: {lr: {loguniform: [1.0e-3, .inf]}}\n",
        "rank.yaml": "model: {name: tiny-llama}\nlora: {rank: {randint: [1, 1000000000]}}\n",
        "unknown.yaml": "lora: {rank: {poisson: [1, 2]}}\n",
        "unclosed.yaml": "lora: {rank: [1,\n",
        "backwards.yaml": "train: {lr: {uniform: [0.1, 0.01]}}\n",
        "dropout.yaml": "lora: {dropout: {uniform: [0.0, 1.5]}}\n",
        "points.yaml": "lora: {rank: {choice: [4, 8]}}\npoints_to_evaluate: [{lora.rank: 5}]\n",
    }
    for name, _ in space_files.items():
        cases.append((f"tune --space {name}", [*tune[:3], "--space", f"./{name}", *tune[5:]]))
    tune_flags = [
        ["--num-samples", "0"], ["--num-samples", "abc"], ["--max-concurrent", "0"],
        ["--max-mem-mb", "-5"], ["--max-mem-mb", "nan"], ["--max-mem-mb", "1"],
        ["--objective", "accuracy"], ["--objective", "peak_mem_mb"], ["--grace", "0"],
        ["--max-t", "0"], ["--reduction-factor", "1"], ["--time-budget-s", "-1"],
        ["--cpus-per-trial", "-1"], ["--gpus-per-trial", "-1"], ["--resource", "nonsense"],
        ["--max-failures", "-2"], ["--name", "a/b"], ["--name", ".hidden"], ["--resume"],
        ["--resume", "--name", "never-made"], ["--set", "noequals"],
        ["--set", "lora.nosuch=1"], ["--set", "lora.rank=1000000000"],
        ["--storage-path", "/proc/x"], ["--storage-path", "a-file"], ["--space", "missing.yaml"],
        ["--dashboard", "--address", "127.0.0.1:6379"], ["--unknown-flag"],
    ]
    cases += [(f"tune {' '.join(f)}", [*tune, *f]) for f in tune_flags]
    train_flags = [
        ["--threads", "0"], ["--threads", "-3"], ["--threads", "100000"], ["--rank", "1000000000"],
        ["--size", "1000000000"], ["--out", "/proc/x"], ["--out", "a-file"],
        ["--config", "missing.yaml"], ["--config", "a-file"], ["--targets", "foo"],
    ]
    cases += [(f"train_one {' '.join(f)}", [*train, *f]) for f in train_flags]
    export = [PY, "-m", "study.export"]
    cases += [
        ("export missing trial", [*export, "nowhere", "x"]),
        ("export a file", [*export, "a-file", "x"]),
        ("export a study dir", [*export, str(study), "x"]),
        ("export to /proc/x", [*export, trial, "/proc/x"]),
        ("export to a file", [*export, trial, "a-file"]),
        ("export a base trial", [*export, base, "x"]),
        ("export full without --merged", [*export, full, "x"]),
    ]
    reproduce = [PY, "-m", "study.reproduce"]
    cases += [
        ("reproduce missing trial", [*reproduce, "nowhere"]),
        ("reproduce --threads 0", [*reproduce, trial, "--threads", "0"]),
        ("reproduce --out a file", [*reproduce, trial, "--out", "a-file"]),
        ("reproduce --rtol abc", [*reproduce, trial, "--rtol", "abc"]),
    ]
    cases += [
        ("analysis no command", analysis),
        ("analysis unknown command", [*analysis, "plot", str(study)]),
        ("report missing dir", [*analysis, "report", "nowhere"]),
        ("report a file", [*analysis, "report", "a-file"]),
        ("report a trial dir", [*analysis, "report", trial]),
        ("report --out /proc/x", [*analysis, "report", str(study), "--out", "/proc/x"]),
        ("report --out a file", [*analysis, "report", str(study), "--out", "a-file"]),
        ("report --out a non-report dir", [*analysis, "report", str(study), "--out", "full"]),
        ("report --curves-by foo", [*analysis, "report", str(study), "--curves-by", "foo"]),
        ("pareto --x foo", [*analysis, "pareto", str(study), "--x", "foo"]),
        ("pareto --y foo", [*analysis, "pareto", str(study), "--y", "foo"]),
        ("best --objective foo", [*analysis, "best", str(study), "--objective", "foo"]),
        ("best --max-mem-mb -5", [*analysis, "best", str(study), "--max-mem-mb", "-5"]),
        ("best --max-mem-mb nan", [*analysis, "best", str(study), "--max-mem-mb", "nan"]),
        ("best --max-mem-mb abc", [*analysis, "best", str(study), "--max-mem-mb", "abc"]),
    ]
    return cases, space_files


def prepare(workdir: Path, space_files: dict[str, str]) -> None:
    """What the cases name in their working directory: a file, a non-report directory, spaces."""
    (workdir / "a-file").write_text("keep me\n")
    (workdir / "full").mkdir()
    (workdir / "full" / "notes.txt").write_text("mine\n")
    for name, text in space_files.items():
        (workdir / name).write_text(text)
