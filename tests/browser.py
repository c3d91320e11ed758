"""A real headless Chromium (Debian's chromium-headless-shell or chromium), driven over the
DevTools protocol, with no network beyond this machine: every host name but 127.0.0.1 and
localhost fails to resolve, and every request the page makes is recorded."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def browser_path() -> str:
    """The browser's executable; in CI a missing browser fails the test (`.ci/run` installs it)."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    message = "no headless Chromium: apt-get install chromium-headless-shell"
    if IN_CI:
        pytest.fail(message + " (CI=true: the GraphiQL browser test must run)")
    pytest.skip(message)


@dataclass
class Page:
    socket: Any
    session_id: str
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)  # id: url, method, body, status
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiting: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        command = {"id": message_id, "method": method, "params": params, "sessionId": self.session_id}
        await self.socket.send(json.dumps(command))
        return await asyncio.wait_for(future, 30)

    async def evaluate(self, expression: str) -> Any:
        reply = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, seconds: float = 30) -> Any:
        """The value of `expression` once it is truthy."""
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                body = await self.evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
                raise AssertionError(f"timed out waiting for {expression}; the page shows:\n{body}")
            await asyncio.sleep(0.2)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message and message["id"] in self._waiting:
            future = self._waiting.pop(message["id"])
            if "error" in message:
                future.set_exception(AssertionError(f"DevTools: {message['error']}"))
            else:
                future.set_result(message.get("result", {}))
            return
        params = message.get("params", {})
        if message.get("method") == "Network.requestWillBeSent":
            request = params["request"]
            self.requests[params["requestId"]] = {
                "url": request["url"],
                "method": request["method"],
                "body": request.get("postData", ""),
                "status": None,
            }
        elif message.get("method") == "Network.responseReceived":
            if params["requestId"] in self.requests:
                self.requests[params["requestId"]]["status"] = params["response"]["status"]
        elif message.get("method") == "Network.loadingFailed" and params["requestId"] in self.requests:
            self.requests[params["requestId"]]["status"] = f"failed: {params.get('errorText')}"


@contextlib.asynccontextmanager
async def headless_page(url: str) -> AsyncIterator[Page]:
    """`url` open in a fresh headless Chromium with no network but loopback."""
    executable = browser_path()
    profile = tempfile.mkdtemp(prefix="gateway-chromium-")
    # Started once per test; its first lines (the DevTools address) are read before any await.
    process = subprocess.Popen(  # noqa: ASYNC220
        [
            executable,
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            # No network: names other than loopback do not resolve, so a CDN cannot be reached.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        endpoint = None
        for line in process.stderr:  # Chromium prints its DevTools address first thing
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                endpoint = found[1]
                break
        assert endpoint, "Chromium did not start its DevTools endpoint"
        async with websockets.connect(endpoint, max_size=None) as socket:
            create = {"id": 1, "method": "Target.createTarget", "params": {"url": "about:blank"}}
            await socket.send(json.dumps(create))
            target = json.loads(await socket.recv())["result"]["targetId"]
            params = {"targetId": target, "flatten": True}
            attach = {"id": 2, "method": "Target.attachToTarget", "params": params}
            await socket.send(json.dumps(attach))
            session_id = None
            while session_id is None:
                message = json.loads(await socket.recv())
                if message.get("id") == 2:
                    session_id = message["result"]["sessionId"]
            page = Page(socket, session_id)

            async def pump() -> None:
                async for raw in socket:
                    message = json.loads(raw)
                    if message.get("sessionId") == session_id or message.get("id") in page._waiting:
                        page._dispatch(message)

            reader = asyncio.create_task(pump())
            try:
                await page.call("Network.enable")
                await page.call("Runtime.enable")
                await page.call("Page.enable")
                await page.call("Page.navigate", url=url)
                yield page
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    finally:
        process.kill()
        process.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)
