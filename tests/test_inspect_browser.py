"""The call viewer in a real browser: headless Chromium, driven over the DevTools protocol (websockets).

The page is opened from file:// with every network path shut (hosts resolve to nothing, the proxy is a closed
port) on top of the page's own CSP (default-src 'none'): any request it made would show as a failed request
or a console error, and the test asserts there are none.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from phonebridge.inspector.cli import write_call_html

CASSETTES = Path(__file__).parent / "cassettes"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)

if CHROMIUM is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("chromium is missing: CI installs it from .ci/packages.txt (bash .ci/system-packages)")
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)


class DevTools:
    """The smallest DevTools client: one page session, commands by id, events kept in order."""

    def __init__(self, ws: Any) -> None:
        self._ws, self._ids = ws, itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.session: str | None = None

    async def _read(self) -> None:
        async for raw in self._ws:
            message = json.loads(raw)
            if "id" in message and message["id"] in self._waiting:
                self._waiting.pop(message["id"]).set_result(message)
            else:
                async with self._changed:
                    self.events.append(message)
                    self._changed.notify_all()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        await self._ws.send(json.dumps(message))
        reply = await asyncio.wait_for(future, 30)
        assert "error" not in reply, (method, reply["error"])
        return reply.get("result", {})

    async def event(self, method: str) -> dict[str, Any]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: any(e.get("method") == method for e in self.events)), 30)
        return next(e for e in self.events if e.get("method") == method)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Script exceptions, console errors, failed requests: anything that says the page is broken."""
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:400])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(json.dumps(params.get("args"))[:400])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", "")[:400])
            elif method == "Network.loadingFailed":
                found.append(f"request failed: {params.get('errorText')}")
        return found

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[DevTools]:
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
        "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000",
        "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--disable-background-networking",
        "--disable-component-update", "--autoplay-policy=no-user-gesture-required", "--disable-dev-shm-usage",
        "about:blank",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    log: list[str] = []
    try:
        url = await asyncio.wait_for(_devtools_url(process.stderr, log), 30)
        drain = asyncio.get_running_loop().create_task(_drain(process.stderr, log))
        async with websockets.connect(url, max_size=64 * 2**20) as ws:
            tools = DevTools(ws)
            targets = await tools.send("Target.getTargets")
            page = next(t for t in targets["targetInfos"] if t["type"] == "page")
            tools.session = (await tools.send("Target.attachToTarget", targetId=page["targetId"], flatten=True))["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                await tools.send(f"{domain}.enable")
            yield tools
        drain.cancel()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _devtools_url(stream: asyncio.StreamReader, log: list[str]) -> str:
    while line := (await stream.readline()).decode(errors="replace"):
        log.append(line)
        if "DevTools listening on " in line:
            return line.split("DevTools listening on ", 1)[1].strip()
    raise AssertionError("chromium exited before DevTools was up:\n" + "".join(log[-20:]))


async def _drain(stream: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stream.readline():  # keep its stderr pipe from filling up and stalling it
        log.append(line.decode(errors="replace"))


async def test_the_viewer_renders_without_errors_offline_and_shows_the_transcript(tmp_path):
    page = write_call_html(CASSETTES / "tool_call.jsonl", tmp_path / "call.html")
    async with chromium(tmp_path) as tools:
        await tools.send("Page.navigate", url=page.as_uri())
        await tools.event("Page.loadEventFired")
        assert await tools.evaluate("window.__inspect && window.__inspect.ready") is True
        text = await tools.evaluate("document.getElementById('log').innerText")
        for line in ("Hello, how can I help?", "Order A7?", "It is out for delivery.", "Bye now.", "Goodbye!",
                     'lookup_order(order_id="A7")', "end_call()"):
            assert line in text, text
        lines = await tools.evaluate("Array.from(document.querySelectorAll('#log .entry.caller, #log .entry.agent')).length")
        assert lines == 5
        # The canvas was drawn: the caller's lane has blue pixels in it.
        drawn = await tools.evaluate(
            "(() => { const c = document.getElementById('timeline'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            " for (let i = 0; i < d.length; i += 4) if (d[i] < 80 && d[i + 2] > 200) n++; return n; })()")
        assert drawn > 500
        # Hovering the caller's lane just after a line shows its full words.
        box = await tools.evaluate("(() => { const r = document.getElementById('timeline').getBoundingClientRect();"
                                   " return [r.left, r.top, r.width]; })()")
        duration = await tools.evaluate("JSON.parse(document.getElementById('call-data').textContent).duration")
        left, top, width = box
        await tools.send("Input.dispatchMouseEvent", type="mouseMoved", x=left + 16 + 0.6 / duration * (width - 32),
                         y=top + 60)
        assert "Order A7?" in await tools.evaluate("document.getElementById('timeline').title")
        # A click on a log line moves the playhead there.
        at = await tools.evaluate("(() => { const e = document.querySelectorAll('#log .entry.tool')[0];"
                                  " e.click(); return [parseFloat(e.dataset.at), window.__inspect.position]; })()")
        assert at[0] == pytest.approx(at[1])
        shot = await tools.send("Page.captureScreenshot", format="png")
        (tmp_path / "call.png").write_bytes(base64.b64decode(shot["data"]))
        assert tools.errors() == []
        assert [u for u in tools.requests() if not u.startswith(("file:", "data:", "about:"))] == []
    assert (tmp_path / "call.png").stat().st_size > 10_000


async def test_the_page_plays_its_own_audio(tmp_path):
    page = write_call_html(CASSETTES / "barge_in.jsonl", tmp_path / "call.html")
    async with chromium(tmp_path) as tools:
        await tools.send("Page.navigate", url=page.as_uri())
        await tools.event("Page.loadEventFired")
        await tools.evaluate("document.getElementById('play').click()")
        assert await tools.evaluate("window.__inspect.playing") is True
        barge = await tools.evaluate("document.querySelector('#log .entry.barge').innerText")
        assert "heard 1.14 s of the 1.16 s sent" in barge
        assert tools.errors() == []
