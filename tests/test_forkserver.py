"""study.forkserver: a trial forked from the pre-imported server reports what the same trial
reports in-process, stops training while its report waits, and ends with its worker."""

from __future__ import annotations

import json
import os
import socket
import time

import psutil
import pytest

from study import record
from study.search import forks as forkserver
from study.search import runner

CONFIG = {"model.name": "tiny-llama", "train.steps": 4, "eval.every": 2, "data.size": 16}


@pytest.fixture(scope="module")
def server():
    srv = forkserver.ForkServer.start("tiny-llama", quantized=False)
    assert srv.ready(), (srv.dir / forkserver.LOG).read_text()
    yield srv
    srv.close()
    assert srv.proc.returncode is not None and not srv.dir.exists()


def request(trial_dir, env=None, config=CONFIG) -> dict:
    return {"config": config, "trial_dir": str(trial_dir), "max_mem_mb": None,
            "env": {**os.environ, **(env or {})}, "cwd": os.getcwd()}


def test_a_forked_trial_reports_what_the_same_trial_reports_in_process(server, tmp_path):
    forked, here = [], []
    forkserver.run_forked(server.socket, request(tmp_path / "forked"), forked.append)
    runner.run(CONFIG, tmp_path / "here", None, here.append)
    assert [r["step"] for r in forked] == [r["step"] for r in here] == [2, 4]
    assert forked[-1]["final"] is True
    for a, b in zip(forked, here):
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    assert record.read_metrics(tmp_path / "forked")["step"] == 4
    # its own process: a peak of its own, measured (not the server's, not zero)
    assert forked[-1]["peak_mem_mb"] > 0


def test_an_error_ray_retries_comes_back_as_one(server, tmp_path):
    with pytest.raises(forkserver.TrialProcessError, match="injected transient fault"):
        forkserver.run_forked(
            server.socket, request(tmp_path / "t", {"LORA_STUDY_FAULT": "transient@2"}),
            lambda m: None)


def test_an_error_no_retry_fixes_is_a_final_report(server, tmp_path):
    reports = []
    forkserver.run_forked(server.socket, request(tmp_path / "t", {"LORA_STUDY_FAULT": "bug@2"}),
                          reports.append)
    (report,) = reports
    assert "injected non-transient fault" in report["error"] and report["step"] == 2


def test_the_trial_waits_on_its_report_and_ends_with_its_worker(server, tmp_path):
    trial_dir = tmp_path / "t"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(server.socket)
    sock.sendall(json.dumps(request(trial_dir)).encode() + b"\n")
    lines = sock.makefile("rb")
    child = psutil.Process(json.loads(lines.readline())["pid"])
    assert json.loads(lines.readline())["report"]["step"] == 2
    time.sleep(2)  # unacknowledged: as under tune.report, no step 4 is trained meanwhile
    assert [p["step"] for p in record.read_curve(trial_dir)[0]] == [2]
    assert child.is_running()
    lines.close()
    sock.close()  # the worker is gone (Tune stopped it, or its driver died)
    child.wait(timeout=60)  # a child of the server: it reaps it
    assert [p["step"] for p in record.read_curve(trial_dir)[0]] == [2]


def test_a_report_tune_refuses_ends_the_trial_process(server, tmp_path):
    pids = []

    def refuse(metrics):  # as tune.report may raise when Tune ends the trial
        pids.extend(p.pid for p in psutil.Process(server.proc.pid).children())
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):
        forkserver.run_forked(server.socket, request(tmp_path / "t"), refuse)
    (pid,) = pids
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=60)
        psutil.Process(pid)  # reaped by the server
    assert [p["step"] for p in record.read_curve(tmp_path / "t")[0]] == [2]


def test_a_gone_server_is_named(tmp_path):
    with pytest.raises(forkserver.ServerGone, match="fork server"):
        forkserver.run_forked(str(tmp_path / "none.sock"), request(tmp_path), lambda m: None)


def test_forking_is_local_cpu_linux_only(monkeypatch):
    monkeypatch.delenv(forkserver.DISABLE, raising=False)
    assert forkserver.usable(None, 0) is True
    assert forkserver.usable("10.0.0.1:6379", 0) is False  # a joined cluster's other machines
    assert forkserver.usable(None, 1) is False  # CUDA must not be initialised before a fork
    monkeypatch.setenv(forkserver.DISABLE, "0")
    assert forkserver.usable(None, 0) is False
