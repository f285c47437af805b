"""Ray processes a killed driver left behind, found through its Ray session and ended.

    remember(study_dir, session_dir, ray_dir, fork_group)   # the driver, once Ray has started
    forget(study_dir)                       # the driver, once Ray has shut down
    end_leftovers(study_dir)                # the next run of that study, under its lock

A driver killed with -9 cannot stop its local Ray. Its raylet and GCS die with it (Ray asks the
kernel for that), but the dashboard and runtime-env agents go on, and so does a trial's worker:
Ray puts each worker in a process group of its own, so it outlives even a kill of the driver's
group and trains on into the trial directory the next run is about to resume.

What the driver records is its Ray session (the session directory, the driver's pid and start
time, and Ray's package directory). Every process of a Ray session holds its log files
open under that session's directory, so the next run finds the session's processes without any
list that could lag behind (a worker started a second before the kill is found too). A process is
ended only when all of these hold: it started after the recorded driver, it holds a file open in
the recorded session, and its command line is a Ray program (a `ray::` worker title, or a program
or script in Ray's package directory). Never a process found by name, never one whose pid was
reused: a reused pid has a later start time and none of the session's files open.

The study's fork server (``study.forkserver``) and the trial processes forked from it are no
Ray programs; they run in a process group of their own, which the record names: a process of
that group started after the driver is ended too (a child outlives its server in the group).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import psutil

from study import record


def remember(study_dir: Path, session_dir: str, ray_dir: str, fork_group: int | None = None
             ) -> None:
    """Record this driver's local Ray session (call it once Ray has started) and the process
    group of its fork server, if it has one."""
    me = psutil.Process()
    record.write_json(record.ray_session_path(study_dir), {
        "session_dir": str(session_dir),
        "driver_pid": me.pid,
        "driver_started": me.create_time(),  # psutil's clock: comparable with create_time()
        "ray_dir": str(ray_dir),
        "fork_group": fork_group,
    })


def forget(study_dir: Path) -> None:
    """Remove the record (Ray shut its processes down itself)."""
    record.ray_session_path(study_dir).unlink(missing_ok=True)


def _is_ray_program(cmd: list[str], ray_dir: str) -> bool:
    # Workers and agents retitle themselves (`ray::IDLE`, `ray::ImplicitFunc.train`); the
    # others run a binary or a script of Ray's package (gcs_server, raylet, dashboard, monitors).
    if cmd and cmd[0].startswith("ray::"):
        return True
    inside = ray_dir.rstrip(os.sep) + os.sep
    return any(arg.startswith(inside) for arg in cmd)


def _holds_session_file(proc: psutil.Process, session_dir: str) -> bool:
    inside = session_dir.rstrip(os.sep) + os.sep
    return any(f.path.startswith(inside) for f in proc.open_files())


def _in_group(proc: psutil.Process, group: int | None) -> bool:
    return group is not None and os.getpgid(proc.pid) == group


def session_processes(session: dict) -> list[psutil.Process]:
    """The live processes of a recorded session, each checked as the module docstring says."""
    session_dir, ray_dir = str(session["session_dir"]), str(session["ray_dir"])
    group = session.get("fork_group")
    group = int(group) if group is not None else None
    since, uid = float(session["driver_started"]), os.getuid()
    found = []
    for proc in psutil.process_iter(["create_time", "uids", "cmdline", "status"]):
        info = proc.info
        if info["create_time"] is None or info["create_time"] < since or proc.pid == os.getpid():
            continue
        if info["uids"] is None or info["uids"].real != uid or info["status"] == "zombie":
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if _in_group(proc, group) or (
                _is_ray_program(info["cmdline"] or [], ray_dir)
                and _holds_session_file(proc, session_dir)
            ):
                found.append(proc)
    return found


def _gone(proc: psutil.Process) -> bool:
    try:  # a killed orphan stays a zombie until its new parent reaps it: it runs no more
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def end_leftovers(study_dir: Path, term_s: float = 1.0, kill_s: float = 10.0) -> list[int]:
    """End the live processes of the Ray session an earlier driver of this study recorded and
    return their pids; when it returns they run no more. Call it holding the study's lock
    (that driver is gone, then)."""
    path = record.ray_session_path(study_dir)
    try:
        session = record.read_json(path)
        alive = session_processes(session)
    except (record.RecordError, KeyError, TypeError, ValueError):
        # none recorded (a clean end), or a torn or foreign record: nothing to trust
        path.unlink(missing_ok=True)
        return []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
            proc.resume()  # a stopped process (Ctrl-Z, a debugger) takes SIGTERM only once resumed
    # A short grace: the session's driver is dead, nothing of it is worth waiting for, and what a
    # worker writes into a trial directory is written atomically, so SIGKILL cannot tear it.
    _, stubborn = psutil.wait_procs(alive, timeout=term_s)
    for proc in stubborn:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + kill_s
    while not all(_gone(p) for p in stubborn) and time.monotonic() < deadline:
        time.sleep(0.05)
    path.unlink(missing_ok=True)
    return [p.pid for p in alive]
