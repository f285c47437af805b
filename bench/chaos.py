"""Chaos run: kill a study's driver at awkward moments, damage a finished study, feed nonsense.

    python -m bench.chaos                      # about 15 minutes on 2 cores; prints the tables
    python -m bench.chaos --out docs/chaos.md  # and writes them (markdown) to a file

1. **Kill points.** One bundled-space study (tiny model, 8 searched trials, baselines, a NaN
   fault for one point) is started, then killed with -9 at each moment below in turn (the driver
   and its Ray processes, or every other time the driver alone) and resumed; a kill before
   anything is written is followed by the original command again. At the end: exactly
   --num-samples searched trials, no configuration trained twice, no trial left running,
   both baselines finished, every Optuna trial ended, no Ray process of a killed driver alive.
2. **Damage.** Copies of the finished study are damaged in each way of
   ``bench.chaos_cases.DAMAGE``; ``python -m analysis report`` must exit 0 with a warning that
   names the damaged file and write a whole report.html; ``best`` must not fail.
3. **Bad input.** Every case of ``bench.chaos_cases.bad_inputs`` runs in an empty working
   directory of its own: exit code 2, one line on stderr, no traceback, nothing left on disk.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.chaos_cases import DAMAGE, bad_inputs, prepare
from bench.common import machine, machine_line
from study import journal, record

ROOT = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 8
FAULT = "nan@2@train.lr=0.01"  # the third point's (no baseline or sampled lr is exactly 0.01)
WAIT_S = 60  # a moment not seen by then (a checkpoint write is milliseconds): killed anyway


def _trials(study: Path, group: str) -> dict[str, dict]:
    out = {}
    for d in record.trial_dirs(study, group):
        try:
            out[d.name] = {"status": record.read_status(d).get("status"),
                           "files": {p.name for p in d.iterdir()}}
        except OSError:
            continue
    return out


def _running(study: Path, group: str, has: str | None = None, lacks: str | None = None):
    for name, t in _trials(study, group).items():
        if t["status"] == "running" and (has is None or has in t["files"]) and (
            lacks is None or lacks not in t["files"]
        ):
            return f"{group}/{name}"
    return None


def _count(study: Path, status: str) -> int:
    return sum(t["status"] == status for t in _trials(study, record.SEARCH).values())


def kill_points(study: Path) -> list[tuple[str, object]]:
    """(moment, predicate(elapsed_s, start_counts) -> what was seen, or None)."""
    s = study

    def grew(status):
        def check(t, c):
            n = _count(s, status)
            return f"{n} {status}" if n > c[status] else None

        return check

    journal_size = {"n": 0}

    def appended(t, c):
        path = record.journal_path(s)
        size = path.stat().st_size if path.is_file() else 0
        seen, journal_size["n"] = journal_size["n"], size
        return f"journal at {size} bytes" if seen and size != seen and t > 1 else None

    return [
        ("planning, nothing written", lambda t, c: "1.5 s in" if t > 1.5 else None),
        (f"{record.STUDY} written, Ray starting", lambda t, c: f"{record.STUDY} only" if (
            record.has_study(s) and not _trials(s, record.BASELINES)) else None),
        ("a baseline starts", lambda t, c: _running(s, record.BASELINES, lacks=record.CURVE)),
        ("a baseline mid-training",
         lambda t, c: _running(s, record.BASELINES, has=record.CHECKPOINT)),
        ("a searched trial starts", lambda t, c: _running(s, record.SEARCH, lacks=record.CURVE)),
        ("a checkpoint being written", lambda t, c: _running(s, record.SEARCH,
                                                             has=".checkpoint.tmp")),
        ("after an evaluation", lambda t, c: _running(s, record.SEARCH, has=record.CURVE)),
        ("a trial just finished", grew("finished")),
        ("a trial just stopped by ASHA", grew("stopped")),
        ("a trial just errored (NaN)", grew("errored")),
        ("right after a journal append", appended),
        ("a random moment", lambda t, c: f"{t:.1f} s in" if t > c["random"] else None),
    ]


# tried first: a good trial (finishes), a poor one (ASHA stops it), rank 1 (the NaN fault)
POINTS = [
    {"lora.rank": 8, "lora.targets": "all-linear", "train.lr": 0.02, "quant.bits": 16},
    {"lora.rank": 2, "lora.targets": "qv", "train.lr": 0.001, "quant.bits": 16},
    {"lora.rank": 1, "lora.targets": "qv", "train.lr": 0.01, "quant.bits": 16},
]


def _space(path: Path) -> Path:
    import yaml

    from search_spaces import load_space

    space = load_space("smoke")
    space["points_to_evaluate"] = POINTS
    path.write_text(yaml.safe_dump(space))
    return path


def _launch(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env={**os.environ, "LORA_STUDY_FAULT": FAULT})


def _kill(proc: subprocess.Popen, whole: bool) -> list[tuple[int, float]]:
    """SIGKILL the driver, or the driver and every process under it, all stopped first so that
    each is killed where the predicate saw it. Not by group alone: Ray puts each worker in a
    process group of its own. Returns (pid, start time) of the processes under the driver."""
    import psutil

    under = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGSTOP)
    for child in under:
        with contextlib.suppress(psutil.Error):
            child.suspend()
    for p in [proc.pid, *(c.pid for c in under)] if whole else [proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    for child in under:  # what is left goes on without its driver, as after `kill -9 PID`
        with contextlib.suppress(psutil.Error):
            child.resume()
    return [(c.pid, c.create_time()) for c in under if c.is_running()]


def _still_alive(procs: list[tuple[int, float]]) -> list[str]:
    import psutil

    out = []
    for pid, started in procs:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid} {p.name()}")
    return out


def run_kills(work: Path, seed: int) -> tuple[list[dict], Path, list[str]]:
    import random

    rng = random.Random(seed)
    storage = work / "res"
    study = storage / "chaos"
    space = _space(work / "space.yaml")
    new = [sys.executable, "-m", "study.tune", "--space", str(space),
           "--storage-path", str(storage), "--name", "chaos", "--num-samples", str(NUM_SAMPLES),
           "--seed", str(seed), "--grace", "2"]
    resume = [*new[:3], "--storage-path", str(storage), "--name", "chaos", "--resume"]
    rows, ray = [], []
    for i, (moment, predicate) in enumerate(kill_points(study)):
        cmd = resume if record.has_study(study) else new
        log = work / f"run{i}.log"
        proc = _launch(cmd, log)
        counts = {k: _count(study, k) for k in ("finished", "stopped", "errored")}
        counts["random"] = rng.uniform(3, 25)
        start, seen = time.time(), None
        while proc.poll() is None:
            if seen := predicate(time.time() - start, counts):
                break
            if time.time() - start > WAIT_S:
                seen = f"not seen in {WAIT_S} s, killed then"
                break
            time.sleep(0.005)
        whole = i % 2 == 0  # every other kill takes the driver alone (kill -9 PID)
        if proc.poll() is None:
            ray += _kill(proc, whole)
        code = proc.wait()
        rows.append({"moment": moment, "seen": seen or "not reached", "whole_group": whole,
                     "killed": code == -signal.SIGKILL, "exit": code})
    final = subprocess.run(resume, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                           env={**os.environ, "LORA_STUDY_FAULT": FAULT})
    problems = check_study(study)
    if left := _still_alive(ray):  # every killed driver's Ray processes ended by a later run
        problems.append(f"Ray processes of killed drivers still alive: {', '.join(left)}")
    if final.returncode != 0:
        problems.insert(0, f"final --resume exited {final.returncode}: {final.stderr[-300:]}")
    for row in rows:
        row["survived"] = row["killed"] and not problems
    return rows, study, problems


def check_study(study: Path) -> list[str]:
    """What must hold after the last resume (an empty list: all of it)."""
    problems = []
    searched = _trials(study, record.SEARCH)
    if len(searched) != NUM_SAMPLES:
        problems.append(f"{len(searched)} searched trials for --num-samples {NUM_SAMPLES}")
    configs = [json.dumps(record.read_config(record.group_dir(study, record.SEARCH) / n),
                          sort_keys=True) for n in searched]
    if len(set(configs)) != len(configs):
        problems.append("a configuration was trained twice")
    left = [n for n, t in {**searched, **_trials(study, record.BASELINES)}.items()
            if t["status"] not in ("finished", "stopped", "errored")]
    if left:
        problems.append(f"trials left unended: {left}")
    base = _trials(study, record.BASELINES)
    if sorted(base) != ["base", "full"] or {t["status"] for t in base.values()} != {"finished"}:
        problems.append(f"baselines: {base}")
    ot = journal.load(study)
    if "RUNNING" in {t.state.name for t in ot.trials}:
        problems.append("an Optuna trial is still RUNNING")
    if len(journal.launched(ot)) != NUM_SAMPLES:
        problems.append(f"{len(journal.launched(ot))} launched Optuna trials")
    return problems


def run_damage(study: Path, work: Path) -> list[dict]:
    rows = []
    for k, (kind, damage) in enumerate(DAMAGE):
        copy = Path(shutil.copytree(study, work / f"damaged{k}" / "chaos",
                                    ignore=shutil.ignore_patterns(record.CHECKPOINT, "report")))
        named = damage(copy)
        rep = subprocess.run([sys.executable, "-m", "analysis", "report", str(copy)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        best = subprocess.run([sys.executable, "-m", "analysis", "best", str(copy)], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        html = copy / "report" / "report.html"
        whole = html.is_file() and html.read_text().rstrip().endswith("</html>")
        warned = any("warning" in x and str(named) in x for x in rep.stderr.splitlines())
        tb = "Traceback" in rep.stderr + best.stderr
        ok = rep.returncode == 0 and whole and warned and not tb and best.returncode in (0, 1)
        observed = (f"report exit {rep.returncode}, {'whole' if whole else 'NO'} report.html, "
                    f"{'warning names the file' if warned else 'NO warning naming it'}, "
                    f"best exit {best.returncode}{', TRACEBACK' if tb else ''}")
        rows.append({"kind": kind, "ok": ok, "observed": observed})
    return rows


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _one_bad(case: tuple[str, list[str]], work: Path, space_files: dict) -> dict:
    name, argv = case
    cwd = Path(tempfile.mkdtemp(dir=work, prefix="bad-"))
    prepare(cwd, space_files)
    before = _tree(cwd)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    left = sorted(set(_tree(cwd)) - set(before))
    ok = res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr and not left
    shutil.rmtree(cwd, ignore_errors=True)
    return {"case": name, "ok": ok, "exit": res.returncode, "lines": len(lines),
            "left": left[:3], "said": (lines or [""])[-1][:160]}


def run_bad(study: Path, work: Path) -> list[dict]:
    cases, space_files = bad_inputs(study)
    before = _tree(study)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(lambda c: _one_bad(c, work, space_files), cases))
    if _tree(study) != before:
        rows.append({"case": "(the study named by the cases)", "ok": False, "exit": None,
                     "lines": 0, "left": sorted(set(_tree(study)) - set(before))[:3], "said": ""})
    return rows


def tables(kills, problems, damage, bad, info, seconds) -> str:
    out = [f"Machine: {machine_line(info)}. Command: `python -m bench.chaos`; {seconds:.0f} s.", ""]
    survived = sum(r["survived"] for r in kills)
    out += [f"**Kill points: {survived} of {len(kills)} survived** (the study's checks after the "
            f"last resume: {'; '.join(problems) or 'all hold'}).", "",
            "| kill point | expected | observed |", "|---|---|---|"]
    for r in kills:
        how = "driver and Ray" if r["whole_group"] else "driver alone"
        seen = f"killed ({how}) at: {r['seen']}" if r["killed"] else f"exited {r['exit']} first"
        verdict = "resumed exactly" if r["survived"] else "FAILED"
        out.append(f"| {r['moment']} | resumes exactly | {seen}; {verdict} |")
    handled = sum(r["ok"] for r in damage)
    out += ["", f"**Damage kinds: {handled} of {len(damage)} handled.**", "",
            "| damage | expected | observed |", "|---|---|---|"]
    out += [f"| {r['kind']} | warning naming the file, whole report | {r['observed']} |"
            for r in damage]
    good = sum(r["ok"] for r in bad)
    out += ["", f"**Bad inputs: {good} of {len(bad)} gave one line, exit 2, nothing on disk.**",
            "", "| case | expected | observed |", "|---|---|---|"]
    for r in bad:
        extra = f"; left {r['left']}" if r["left"] else ""
        said = r["said"].replace("|", "\\|")
        out.append(f"| `{r['case']}` | exit 2, one line | exit {r['exit']}, {r['lines']} "
                   f"line(s){extra}: {said} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    parser.add_argument("--seed", type=int, default=0, help="the study's seed, random kill time")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    start = time.time()
    work = args.keep or Path(tempfile.mkdtemp(prefix="chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    kills, study, problems = run_kills(work, args.seed)
    damage = run_damage(study, work)
    bad = run_bad(study, work)
    text = tables(kills, problems, damage, bad, machine(), time.time() - start)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    ok = all(r["survived"] for r in kills) and all(r["ok"] for r in damage + bad)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
