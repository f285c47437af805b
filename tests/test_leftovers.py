"""study.search.leftovers ends a recorded Ray session's processes and nothing else (no Ray needed:
stand-in processes play the session's; the whole path runs in test_reliability's killed study)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from study import record
from study.search import leftovers

HOLD = """
import sys, time
held = open(sys.argv[1], "a")   # as a Ray process holds its log open
print("ready", flush=True)
time.sleep(120)
"""


def spawn(script: Path, held: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(script), str(held)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def running(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


@pytest.fixture
def session(tmp_path):
    """A session directory, Ray's package directory, and a record made before any process."""
    ses, ray_dir, other = tmp_path / "session", tmp_path / "ray", tmp_path / "elsewhere"
    for d in (ses / "logs", ray_dir, other):
        d.mkdir(parents=True)
    (ray_dir / "agent.py").write_text(HOLD)
    (other / "tail.py").write_text(HOLD)
    study = tmp_path / "study"
    study.mkdir()
    procs = []
    yield study, ses, ray_dir, other, procs
    for p in procs:
        p.kill()
        p.wait()


def started_now() -> float:
    """A start time on psutil's clock (whole-second boot time plus ticks: not time.time()'s),
    later than every process started before, earlier than every one after."""
    time.sleep(0.05)  # start times have a 10 ms tick
    marker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    started = psutil.Process(marker.pid).create_time()
    marker.kill()
    marker.wait()
    time.sleep(0.05)
    return started


def write_record(study: Path, ses: Path, ray_dir: Path, started: float) -> None:
    record.write_json(record.ray_session_path(study), {
        "session_dir": str(ses), "driver_pid": 1, "driver_started": started,
        "ray_dir": str(ray_dir)})


def test_only_the_sessions_ray_processes_started_after_the_driver_are_ended(session, tmp_path):
    study, ses, ray_dir, other, procs = session
    older = spawn(ray_dir / "agent.py", ses / "logs" / "old.log")  # before the driver: a reused pid
    write_record(study, ses, ray_dir, started_now())
    ray_proc = spawn(ray_dir / "agent.py", ses / "logs" / "agent.log")
    tail = spawn(other / "tail.py", ses / "logs" / "agent.log")  # not a Ray program
    foreign = spawn(ray_dir / "agent.py", tmp_path / "other-session.log")  # another session's
    procs += [older, ray_proc, tail, foreign]

    ended = leftovers.end_leftovers(study)

    assert ended == [ray_proc.pid]
    assert not running(ray_proc)
    assert running(older) and running(tail) and running(foreign)
    assert not record.ray_session_path(study).exists()  # the record is used once


def test_a_stopped_process_is_ended_too(session):
    study, ses, ray_dir, _, procs = session
    write_record(study, ses, ray_dir, started_now())
    proc = spawn(ray_dir / "agent.py", ses / "logs" / "agent.log")
    procs.append(proc)
    psutil.Process(proc.pid).suspend()  # as a driver's frozen group leaves it
    assert leftovers.end_leftovers(study, term_s=0.2) == [proc.pid]
    assert not running(proc)  # (psutil reaped it: its exit code is not ours to read)


@pytest.mark.parametrize("text", ['{"session_dir": "/tmp/x", "driv', "[1, 2]", '{"a": 1}', ""])
def test_a_torn_or_foreign_record_ends_nothing_and_is_removed(session, text):
    study, ses, ray_dir, _, procs = session
    proc = spawn(ray_dir / "agent.py", ses / "logs" / "agent.log")
    procs.append(proc)
    record.ray_session_path(study).write_text(text)
    assert leftovers.end_leftovers(study) == []
    assert running(proc)
    assert not record.ray_session_path(study).exists()


def test_no_record_ends_nothing(tmp_path):
    assert leftovers.end_leftovers(tmp_path) == []


def test_remember_records_this_driver_and_forget_removes_it(tmp_path):
    leftovers.remember(tmp_path, "/tmp/ray/session_x", "/site/ray")
    data = json.loads(record.ray_session_path(tmp_path).read_text())
    me = psutil.Process()
    assert data == {"session_dir": "/tmp/ray/session_x", "driver_pid": me.pid,
                    "driver_started": me.create_time(), "ray_dir": "/site/ray",
                    "fork_group": None}
    leftovers.forget(tmp_path)
    assert not record.ray_session_path(tmp_path).exists()


FORKS = """
import os, sys, time
if os.fork() == 0:  # a trial process forked by the server: no Ray program, no session file
    print(os.getpid(), flush=True)
    time.sleep(120)
    os._exit(0)
time.sleep(120)
"""


def test_the_fork_servers_group_is_ended_even_after_the_server_is_gone(session, tmp_path):
    """The fork server (study.forkserver) and its trial processes run no Ray program and hold
    no session file: the record names their process group, which outlives the server."""
    study, ses, ray_dir, _, procs = session
    started = started_now()
    server = subprocess.Popen([sys.executable, "-c", FORKS], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = psutil.Process(int(server.stdout.readline()))
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    procs += [server, bystander]
    record.write_json(record.ray_session_path(study), {
        "session_dir": str(ses), "driver_pid": 1, "driver_started": started,
        "ray_dir": str(ray_dir), "fork_group": server.pid})
    server.kill()  # the server ended (its driver's pipe closed): the child lives on, in its group
    server.wait()
    assert child.is_running()

    assert leftovers.end_leftovers(study, term_s=0.2) == [child.pid]
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert running(bystander)
