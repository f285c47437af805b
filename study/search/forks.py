"""Trials forked from one process that has imported the trial code once: a trial's own process,
without a fresh process's start-up. This module is the driver's and the Ray worker's side; the
server is ``study.forkserver``, which the driver runs as a module.

    with ForkServer.start(model_names, quantized) as server:  # the study's driver
        ... trainable(..., fork_server=server.socket) ...
    run_forked(socket, request, report)                        # a trial's Ray worker

A fresh process per trial spends 3-8 s before it trains (importing torch, transformers' model
loading and bitsandbytes: docs/BENCHMARKS.md), 10-15% of a short trial. The driver starts one
server (``python -m study.forkserver``), which imports all that once and waits on a Unix socket
in a private directory. A trial's Ray worker connects and sends its request (config, trial
directory, environment); the server forks a child for it, and the child runs
``study.search.runner.run`` and sends each report back, waiting for the worker's acknowledgement as
``tune.report`` would block, so a trial that Tune stops has trained no further.

The child is a process of its own: its peak memory is its own high-water mark (``PeakMemory``
resets VmHWM when training starts; nothing the server holds is a trial's), a crash ends only it,
and it exits the moment its Ray worker's end of the socket closes, so Ray's stop, retry and kill
of a trial reach it unchanged. The server exits when the driver's pipe to it closes (the driver
ended, however it ended). It forks from one thread and runs no torch operation, so no thread
pool is copied half-made. Where forking is not safe or not local (CUDA, a joined cluster, not
Linux) trials run in their Ray workers (``usable``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SOCKET = "trials.sock"
LOG = "forkserver.log"
DISABLE = "LORA_STUDY_FORKSERVER"  # "0": every trial starts in its Ray worker (comparisons)
ACK = b"ok\n"


class ServerGone(ConnectionError):
    """The fork server cannot be reached (it ended): the trial runs in its Ray worker."""


class TrialProcessError(RuntimeError):
    """The trial's process failed in a way Ray retries (a RuntimeError: ``--max-failures``)."""


def usable(address: str | None, gpus_per_trial: float | None) -> bool:
    """Whether a study's trials can be forked from a local server: Linux, a local Ray cluster
    (a joined one may run trials on other machines), no GPU (a process must not fork once CUDA
    is initialised, and a GPU trial's start-up is a small share of it), not disabled.
    ``gpus_per_trial``: the plan's resolved share (``gpu_share.resolve``; None: CUDA decides)."""
    if sys.platform != "linux" or address is not None or os.environ.get(DISABLE) == "0":
        return False
    if gpus_per_trial is None:
        import torch

        return not torch.cuda.is_available()
    return gpus_per_trial == 0


def user_pythonpath() -> str:
    """The driver's PYTHONPATH with every entry made absolute ("" when unset): where a user's
    own modules (a ``lora.variant=module:Class``) are found, whatever directory a trial runs in."""
    entries = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    return os.pathsep.join(os.path.abspath(e) for e in entries)


class ForkServer:
    """The driver's handle on the server process: its socket, its log, its end."""

    def __init__(self, proc: subprocess.Popen, directory: Path) -> None:
        self.proc, self.dir = proc, directory
        self.socket = str(directory / SOCKET)

    @classmethod
    def start(cls, models: str, quantized: bool) -> ForkServer:
        """Start the server (it imports while the caller goes on); ``ready()`` waits for it."""
        directory = Path(tempfile.mkdtemp(prefix="lora-study-"))  # mode 0700: ours alone
        root = str(Path(__file__).resolve().parents[1])
        path = user_pythonpath()
        env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
        with open(directory / LOG, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "study.forkserver", str(directory / SOCKET), models,
                 "1" if quantized else "0"],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # a Ctrl-C to the driver's terminal is the driver's
            )
        return cls(proc, directory)

    def ready(self, timeout_s: float = 300.0) -> bool:
        """Wait until the server accepts trials; False if it ended first (see its log)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if os.path.exists(self.socket):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return False

    def close(self, keep_log: Path | None = None) -> None:
        """End the server (its running children end with their workers); move its log to
        ``keep_log`` (a directory) if given, and remove its directory."""
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if keep_log is not None and keep_log.is_dir():
            shutil.move(str(self.dir / LOG), str(keep_log / LOG))
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_forked(path: str, request: dict, report: Callable[[dict], None]) -> None:
    """Run a trial in a child of the server at ``path``: ``report`` each of its reports.

    Raises ServerGone if the server cannot be reached, TrialProcessError if the trial raised an
    error Ray retries or its process ended without a result (killed, out of memory).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError as err:
            raise ServerGone(f"the study's fork server at {path} is gone ({err})") from None
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            for line in sock.makefile("rb"):
                message = json.loads(line)
                if "report" in message:
                    report(message["report"])
                    sock.sendall(ACK)
                elif "retry" in message:
                    raise TrialProcessError(message["retry"])
                elif "done" in message:
                    return
        finally:  # whatever ends this (a report Tune refuses too), the child ends now
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    raise TrialProcessError("the trial's process ended without a result (killed, or out of memory)")
