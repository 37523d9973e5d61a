"""The browser voice page in headless Chromium with a fake microphone fed from a wav
file: the page streams the mic to the server, shows the transcript and the reply,
plays the reply audio, and interrupts it when the "user" talks over it.

Chromium is driven over the DevTools protocol with the `websockets` library. Needs
Debian's chromium (`apt-get install -y chromium`); skipped when it is absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect

from chains.audio import silence, tone, write_wav
from tests.transport_fixtures import FAKE, voice
from transport.server import serve

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs Debian's chromium for the browser test: apt-get install -y chromium"
    ),
]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-port=0",
]


class DevTools:
    """A minimal Chrome DevTools protocol client: attach to the page, evaluate JS."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self._id = 0
        self.session: str | None = None

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if self.session is not None:
            msg["sessionId"] = self.session
        await self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    async def attach_to_page(self) -> None:
        targets = (await self.call("Target.getTargets"))["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        res = await self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})
        self.session = res["sessionId"]

    async def eval(self, expr: str) -> Any:
        res = await self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True})
        return res["result"].get("value")


async def wait_for(dt: DevTools, expr: str, timeout: float = 60.0) -> Any:
    with anyio.fail_after(timeout):
        while True:
            v = await dt.eval(expr)
            if v:
                return v
            await anyio.sleep(0.2)


async def test_voice_page_in_headless_chromium(tmp_path: Path):
    FAKE.reset()
    FAKE.tts_frames_per_word = 40  # 0.8 s of reply audio per word: long enough to talk over
    mic = tmp_path / "mic.wav"
    # the fake microphone loops this: half a second of "speech", then a pause
    write_wav(mic, tone(500, 48000, 300) + silence(700, 48000), 48000)
    profile = tmp_path / "profile"
    async with serve(voice, port=0) as srv:
        assert CHROMIUM is not None
        proc = subprocess.Popen(
            [
                CHROMIUM,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--use-file-for-fake-audio-capture={mic}",
                f"{srv.http_url}?autostart=1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            port_file = profile / "DevToolsActivePort"
            with anyio.fail_after(60):
                while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                    await anyio.sleep(0.05)
            port, path = port_file.read_text().splitlines()[:2]
            async with connect(f"ws://127.0.0.1:{port}{path}", max_size=None) as ws:
                dt = DevTools(ws)
                await dt.attach_to_page()
                transcript = await wait_for(dt, "document.getElementById('transcript').textContent")
                assert transcript.startswith("heard ")
                reply = await wait_for(dt, "document.getElementById('reply').textContent")
                assert reply.startswith("you said: heard")
                state = await wait_for(dt, "window.chains.audioFrames > 0 && window.chains")
                assert state["session"] and state["outRate"] == 24000 and state["framesSent"] > 0
                assert state["errors"] == []
                # the next burst of "speech" lands while the long reply plays: barge-in
                await wait_for(dt, "window.chains.interrupts > 0")
                # the server dropped that turn and said so in the turn's figures
                await wait_for(dt, "window.chains.metrics.some((m) => m.interrupted)")
                # and what was heard of it: the page marks the rest of the reply as unheard
                await wait_for(dt, "window.chains.truncated.length > 0")
                await wait_for(dt, "document.querySelector('#reply span.unheard') !== null")
                rows = await wait_for(dt, "document.querySelectorAll('#metrics tr').length")
                assert rows >= 1
            assert srv.stats["sessions"] == 1
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
