"""python -m study.forkserver SOCKET MODELS QUANTIZED: the fork server a study's driver starts.

The driver's and the trial's side, and why trials are forked, are in ``study.search.forks``
(``ForkServer.start`` runs this module). The server imports what every trial imports once, then
forks a child per connection; the child runs ``study.search.runner.run`` and sends each report
back as a JSON line. It exits when its stdin (the driver's pipe) closes.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import socket
import sys
import threading
from pathlib import Path


def _preload(models: str, quantized: bool) -> None:
    """Import what every trial imports: the trial code, transformers' model loading and the
    models' architectures (comma-separated names), bitsandbytes when the study quantizes."""
    import study.search.runner  # noqa: F401  (torch, the loop, the metrics, the data)
    from study.trial.models import architecture

    for model in models.split(","):
        architecture(model)
    if quantized:
        from study.trial.models.quantize import import_bitsandbytes

        import_bitsandbytes()


def serve(path: str, model: str, quantized: bool) -> None:
    """The server: import, then fork a child per connection until stdin closes."""
    _preload(model, quantized)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    listener.listen(64)
    os.rename(path + ".new", path)  # the name appears once connections are accepted
    try:
        while True:
            ready, _, _ = select.select([listener, sys.stdin], [], [], 1.0)
            _reap()
            if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
                return  # the driver ended
            if listener in ready:
                conn, _ = listener.accept()
                if os.fork() == 0:
                    listener.close()
                    code = 1
                    try:
                        code = _child(conn)
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(code)
                conn.close()
    finally:
        listener.close()
        os.unlink(path)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _child(conn: socket.socket) -> int:
    """A trial's process: take the worker's environment, run the trial, report, exit."""
    reader = conn.makefile("rb")
    request = json.loads(reader.readline())
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    acks: queue.Queue = queue.Queue()

    def watch() -> None:
        for line in reader:
            acks.put(line)
        os._exit(3)  # the worker is gone (stopped, killed, or its driver ended): so is the trial

    threading.Thread(target=watch, daemon=True).start()

    def send(message: dict) -> None:
        conn.sendall(json.dumps(message, default=float).encode() + b"\n")

    send({"pid": os.getpid()})  # for the worker's log and the tests

    def report(metrics: dict) -> None:
        send({"report": metrics})
        acks.get()  # as tune.report: Tune may stop the trial here

    import torch

    from study.search import runner

    if threads := request["env"].get("OMP_NUM_THREADS"):  # what Ray gives the worker
        torch.set_num_threads(int(threads))
    try:
        runner.run(request["config"], Path(request["trial_dir"]), request["max_mem_mb"], report)
    except BaseException as err:  # the runner re-raises only what Ray retries
        send({"retry": f"{type(err).__name__}: {err}"})
        return 1
    send({"done": True})
    return 0


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], sys.argv[3] == "1")
