"""Ray processes a killed driver left behind, found through the study directory and ended.

    with recorded_processes(study_dir):     # the driver, while its local Ray runs
        ...
    end_leftovers(study_dir)                # the next run of that study, under its lock

A driver killed with -9 cannot stop its local Ray: some of Ray's processes (the dashboard and
runtime-env agents among them) go on without it. The driver keeps a list of the processes it
started (pid, start time, command line) in the study directory; the next run ends those still
alive, each only if its pid still belongs to the same process (same start time, same command
line or, for a worker that retitled itself, the same executable), with the processes those
started since (a worker for a trial that began after the list was last written): never a
process found by name, never one a pid was reused for.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import psutil

from study import record

REFRESH_S = 2.0  # workers come and go while trials run (later ones: children of listed ones)


def _children() -> list[dict]:
    out = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            out.append({"pid": proc.pid, "started": proc.create_time(), "cmd": proc.cmdline(),
                        "exe": proc.exe()})
    return out


def remember(study_dir: Path) -> None:
    """Record the processes this driver started (its descendants), replacing the last list."""
    record.write_json(record.ray_processes_path(study_dir), _children())


@contextlib.contextmanager
def recorded_processes(study_dir: Path):
    """Keep the list current while the block runs; remove it when the block ends (Ray then
    shut its processes down itself)."""
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(REFRESH_S):
            with contextlib.suppress(OSError, psutil.Error):
                remember(study_dir)

    remember(study_dir)
    thread = threading.Thread(target=refresh, name="ray-process-list", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        record.ray_processes_path(study_dir).unlink(missing_ok=True)


def _same(entry: dict) -> psutil.Process | None:
    """The live process of a recorded entry, or None (gone, or its pid now names another)."""
    try:
        proc = psutil.Process(int(entry["pid"]))
        # Ray's workers retitle themselves (ray::IDLE -> ray::ImplicitFunc.train), which changes
        # their command line but not their executable; the start time pins the pid either way.
        same_program = proc.cmdline() == entry["cmd"] or proc.exe() == entry.get("exe")
        if proc.create_time() == entry["started"] and same_program:
            return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        pass
    return None


def end_leftovers(study_dir: Path, wait_s: float = 5.0) -> list[int]:
    """End the recorded processes of an earlier driver of this study that are still alive;
    return their pids. Call it holding the study's lock (that driver is gone, then)."""
    path = record.ray_processes_path(study_dir)
    try:
        entries = record.read_json(path)
    except record.RecordError:  # none recorded (a clean end), or a torn list: nothing to trust
        path.unlink(missing_ok=True)
        return []
    alive = [p for e in entries if isinstance(e, dict) and (p := _same(e))] if isinstance(
        entries, list
    ) else []
    # and what those started since the list was last written (a worker for a new trial)
    pids = {p.pid for p in alive}
    for proc in list(alive):
        with contextlib.suppress(psutil.Error):
            alive += [c for c in proc.children(recursive=True) if c.pid not in pids]
            pids |= {p.pid for p in alive}
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
            proc.resume()  # a stopped process (Ctrl-Z, a debugger) takes SIGTERM only once resumed
    _, stubborn = psutil.wait_procs(alive, timeout=wait_s)
    for proc in stubborn:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    path.unlink(missing_ok=True)
    return [p.pid for p in alive]
