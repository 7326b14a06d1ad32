"""A real headless Chromium driven over the DevTools protocol (CDP) with `websockets`, already installed as a
google-genai dependency: no Playwright, no browser download. Debian's `chromium` (/usr/bin/chromium).

    async with Chromium(fake_mic_wav) as browser:
        page = await browser.open(url)
        assert await page.evaluate("softphone.waitFor(() => softphone.state.ready)")
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


def find_chromium() -> str | None:
    for candidate in CHROMIUM_CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    return None


class CdpError(RuntimeError):
    pass


class Page:
    """One tab: evaluate JavaScript (promises awaited), take screenshots, collect script errors."""

    def __init__(self, browser: Chromium, session_id: str) -> None:
        self._browser, self.session_id = browser, session_id
        self.errors: list[str] = []  # uncaught exceptions and console.error lines
        self.console: list[str] = []
        self._loaded = asyncio.Event()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self._browser.send(method, params, session_id=self.session_id)

    async def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        async with asyncio.timeout(timeout):
            reply = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise CdpError(details.get("exception", {}).get("description") or details.get("text"))
        return reply["result"].get("value")

    async def screenshot(self, path: Path) -> Path:
        reply = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(reply["data"]))
        return path

    async def loaded(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await self._loaded.wait()

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self._loaded.set()
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", "?"))
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"{params.get('type')}: {text}")
            if params.get("type") == "error":
                self.errors.append(text)


class Chromium:
    """Launches headless Chromium with a fake microphone playing `fake_mic_wav` (looped)."""

    def __init__(self, fake_mic_wav: Path | None = None, executable: str | None = None) -> None:
        self._wav, self._exe = fake_mic_wav, executable or find_chromium()
        self._proc: asyncio.subprocess.Process | None = None
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._pages: dict[str, Page] = {}
        self._reader: asyncio.Task[None] | None = None
        self._profile = tempfile.TemporaryDirectory(prefix="phonebridge-chromium-")
        self.stderr: list[bytes] = []

    async def __aenter__(self) -> Chromium:
        if self._exe is None:
            raise CdpError("chromium is not installed")
        args = [
            self._exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
            "--remote-debugging-port=0", f"--user-data-dir={self._profile.name}",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required", "--window-size=1100,760",
        ]
        if self._wav is not None:
            args.append(f"--use-file-for-fake-audio-capture={self._wav}")
        self._proc = await asyncio.create_subprocess_exec(
            *args, "about:blank", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "LANG": "C"},
        )
        try:
            url = await asyncio.wait_for(self._devtools_url(), 30)
            self._ws = await connect(url, max_size=None, ping_interval=None)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        self._reader = asyncio.create_task(self._read())
        return self

    async def _devtools_url(self) -> str:
        assert self._proc is not None and self._proc.stderr is not None
        while True:
            line = await self._proc.stderr.readline()
            if not line:
                raise CdpError("chromium exited before DevTools listened:\n" + b"".join(self.stderr).decode(errors="replace"))
            self.stderr.append(line)
            match = _LISTENING.search(line)
            if match:
                # Keep draining stderr, or a chatty browser blocks on a full pipe.
                asyncio.get_running_loop().create_task(self._drain_stderr())
                return match.group(1).decode()

    async def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while line := await self._proc.stderr.readline():
            self.stderr.append(line)

    async def _read(self) -> None:
        assert self._ws is not None
        with contextlib.suppress(Exception):
            async for raw in self._ws:
                message = json.loads(raw)
                if "id" in message:
                    future = self._pending.pop(message["id"], None)
                    if future is not None and not future.done():
                        future.set_result(message)
                elif message.get("sessionId") in self._pages:
                    self._pages[message["sessionId"]].on_event(message["method"], message.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("the DevTools connection closed"))

    async def send(self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None) -> dict[str, Any]:
        assert self._ws is not None
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        await self._ws.send(json.dumps(message))
        reply = await future
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    async def open(self, url: str) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        self._pages[page.session_id] = page
        await page.send("Runtime.enable")
        await page.send("Page.enable")
        await page.send("Page.navigate", url=url)
        await page.loaded()
        return page

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        self._profile.cleanup()
