"""A minimal Chrome DevTools Protocol driver for tests: open a page, evaluate, screenshot.

    result = open_page("/usr/bin/chromium", "file:///tmp/r/report.html", tmp_dir, "document.title")

Speaks the protocol over a websocket with aiohttp (already installed with ray[default]), so the
tests need neither Playwright nor chromedriver. Chromium runs headless with --no-sandbox (tests
may run as root, where the sandbox refuses to start).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple


class PageResult(NamedTuple):
    """What the page gave back."""

    value: Any  # the expression's value (JSON-serialisable)
    screenshot: bytes  # PNG of the viewport
    requests: list[str]  # every URL the page requested


class _Session:
    """Request/response matching by id; events are kept in order of arrival."""

    def __init__(self, ws, timeout: float) -> None:
        self.ws, self.timeout = ws, timeout
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    async def _receive(self) -> dict:
        msg = await asyncio.wait_for(self.ws.receive(), self.timeout)
        if msg.data is None or not isinstance(msg.data, str):
            raise RuntimeError(f"DevTools connection ended: {msg.type}")
        return json.loads(msg.data)

    async def send(self, method: str, params: dict | None = None, session: str | None = None):
        ident = next(self.ids)
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        while True:
            reply = await self._receive()
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    async def wait_event(self, method: str) -> dict:
        while True:
            found = next((e for e in self.events if e["method"] == method), None)
            if found:
                return found
            reply = await self._receive()
            if "method" in reply:
                self.events.append(reply)


async def _drive(ws_url: str, url: str, expression: str, size: tuple[int, int], timeout: float):
    import aiohttp

    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        cdp = _Session(ws, timeout)
        target = await cdp.send("Target.createTarget", {"url": "about:blank"})
        attached = await cdp.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        sid = attached["sessionId"]
        await cdp.send("Page.enable", session=sid)
        await cdp.send("Network.enable", session=sid)
        await cdp.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False},
            session=sid,
        )
        await cdp.send("Page.navigate", {"url": url}, session=sid)
        await cdp.wait_event("Page.loadEventFired")
        evaluated = await cdp.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=sid,
        )
        if "exceptionDetails" in evaluated:
            raise RuntimeError(f"the expression raised: {evaluated['exceptionDetails']}")
        shot = await cdp.send("Page.captureScreenshot", {"format": "png"}, session=sid)
        requests = [
            e["params"]["request"]["url"]
            for e in cdp.events
            if e["method"] == "Network.requestWillBeSent"
        ]
        return PageResult(
            evaluated["result"].get("value"), base64.b64decode(shot["data"]), requests
        )


def _devtools_url(profile: Path, proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """Chromium writes its port and browser path to DevToolsActivePort once it listens."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited ({proc.returncode}): {log.read_text()[-1500:]}")
        if port_file.is_file():
            lines = port_file.read_text().split()
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.05)
    raise RuntimeError(f"chromium did not open DevTools in {timeout} s: {log.read_text()[-1500:]}")


def open_page(
    chromium: str,
    url: str,
    work_dir: Path,
    expression: str,
    size: tuple[int, int] = (1280, 2400),
    timeout: float = 60.0,
) -> PageResult:
    """Load ``url`` in headless Chromium, evaluate ``expression`` after the load event, and take
    a screenshot of a ``size`` viewport."""
    # a fresh profile each time: a stale DevToolsActivePort would point at a closed port
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=work_dir))
    log = profile.with_suffix(".log")
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        ws_url = _devtools_url(profile, proc, log, timeout)
        return asyncio.run(_drive(ws_url, url, expression, size, timeout))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
