"""`python -m study.tune --dashboard`: the Ray dashboard on 127.0.0.1, behind Ray's token auth."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow
def test_dashboard_is_loopback_only_and_needs_the_token(tmp_path):
    token = secrets.token_hex(16)  # Ray takes the token from the environment first
    env = {**os.environ, "RAY_AUTH_TOKEN": token}
    env.pop("RAY_AUTH_MODE", None)  # --dashboard must turn token auth on by itself
    env.pop("LORA_STUDY_DASHBOARD_HOST", None)
    cmd = [sys.executable, "-m", "study.tune", "--space", "smoke", "--num-samples", "1"]
    cmd += ["--no-baselines", "--set", "train.steps=400", "--set", "eval.every=100"]
    cmd += ["--storage-path", str(tmp_path / "res"), "--name", "dash", "--dashboard"]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        url = None
        deadline = time.time() + 120
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "study.tune ended before printing the dashboard"
            match = re.search(
                r"Ray dashboard: (http://\S+) \(token auth; bound to 127\.0\.0\.1\)", line
            )
            url = match.group(1) if match else None
        assert url and url.startswith("http://127.0.0.1:"), url
        api = url.rstrip("/") + "/api/version"
        assert _status(api) in (401, 403)  # no token: refused
        assert _status(api, "not-the-token") in (401, 403)
        assert _status(api, token) == 200
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have finished already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_dashboard_without_token_auth_is_refused(tmp_path, monkeypatch, capsys):
    from study.tune import main

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    args = ["--space", "smoke", "--storage-path", str(tmp_path / "r"), "--dashboard"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "--dashboard needs Ray's token authentication, but RAY_AUTH_MODE=disabled;"
        " unset it or set RAY_AUTH_MODE=token"
    )
    assert not (tmp_path / "r").exists()
