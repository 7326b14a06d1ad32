"""The softphone in a real headless Chromium, its microphone a WAV (Chromium's fake capture device), talking
to `phonebridge dev`'s server over the bridge's own /twilio/media path, with the LiveEmulator as the model.

Skipped when chromium is not installed, except on CI (CI=true), where it must run: .ci/packages.txt lists it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import numpy as np

from phonebridge.server.app import RUNTIME
from phonebridge.audio import ulaw_decode, ulaw_encode
from phonebridge.dev.server import DevServer
from phonebridge.testing.speech import synth_speech
from phonebridge.testing.wav import write_wav
from tests.cdp import Chromium, find_chromium

AGENT = '''
from phonebridge import Agent

agent = Agent(instructions="You answer order questions.", greeting="Greet the caller.")

@agent.tool
def lookup_order(order_id: str) -> dict:
    """Look up an order by its id, e.g. A-1042."""
    return {"order_id": order_id, "status": "out for delivery"}
'''


@pytest.fixture
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is missing on CI: .ci/packages.txt should have installed it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return path


def _caller_wav(path: Path) -> Path:
    # Continuous speech-like audio, looped by Chromium: the test decides when the caller talks with Mute.
    write_wav(path, synth_speech("hello there I would like to know where my order is please " * 3, 48000), 48000)
    return path


async def _wait(page, condition: str, timeout_ms: int = 15000) -> None:
    ok = await page.evaluate(f"softphone.waitFor(() => {condition}, {timeout_ms})", timeout=timeout_ms / 1000 + 5)
    if not ok:
        state = await page.evaluate("JSON.stringify(softphone.state)")
        log = await page.evaluate("document.getElementById('log').innerText")
        raise AssertionError(f"page never reached {condition}\nstate: {state}\npanel:\n{log}\nerrors: {page.errors}")


async def test_a_browser_call_talks_barges_in_presses_keys_and_fires_a_tool(tmp_path, chromium_path):
    agent_file = tmp_path / "agent.py"
    agent_file.write_text(AGENT)
    # The emulator speaks a little faster than real time, as the real model does: audio builds up in the
    # page's buffer, so a barge-in has something to clear.
    server = DevServer(str(agent_file), port=0, record_dir=str(tmp_path / "calls"), emulator_speed=1.5,
                       out=open(os.devnull, "w"))
    await server.start()
    try:
        async with Chromium(_caller_wav(tmp_path / "caller.wav"), chromium_path) as browser:
            page = await browser.open(server.url)
            await _wait(page, "softphone.state.ready")
            await page.evaluate("softphone.setMuted(true)")
            await page.evaluate("document.getElementById('call').click()")
            await _wait(page, "softphone.state.phase === 'in call' && softphone.state.playedSamples > 4000")
            assert await page.evaluate("softphone.state.bufferedSamples") > 0  # the greeting is still coming

            await page.evaluate("softphone.setMuted(false)")  # the caller talks over the greeting
            await _wait(page, "softphone.state.clears.length >= 1")
            clear = (await page.evaluate("softphone.state.clears"))[0]
            assert clear["droppedSamples"] > 0  # there was buffered agent audio, and the clear emptied it
            await _wait(page, "softphone.state.events.some(e => e.kind === 'barge_in')")

            # Half a second more of speech (25 frames of 20 ms), then silence: the emulator calls the tool.
            sent = await page.evaluate("softphone.state.framesSent")
            await _wait(page, f"softphone.state.framesSent >= {sent + 25}")
            await page.evaluate("softphone.setMuted(true)")
            await _wait(page, "document.getElementById('log').innerText.includes('← lookup_order ok')")
            panel = await page.evaluate("document.getElementById('log').innerText")
            assert '→ lookup_order({"order_id":"A-1042"})' in panel
            assert "barge-in" in panel and "first audio" in panel

            await page.evaluate("softphone.press('5')")
            emulator = server.emulator
            conversation = emulator.conversations[0]
            await emulator.wait_for(lambda: any("pressed 5" in t for c in conversation.connections for t in c.texts()))
            assert conversation.audio_bytes_in > 16000 * 2  # over a second of the caller's speech reached the model
            assert conversation.tool_responses[0].response == {"order_id": "A-1042", "status": "out for delivery"}
            assert conversation.barge_ins >= 1

            played = await page.evaluate("softphone.state.playedSamples")
            assert played > 8000 * 0.5  # the page played the agent's audio
            assert await page.evaluate("softphone.state.marksEchoed") > 0  # as the audio before each mark played
            await page.screenshot(tmp_path / "softphone.png")

            agent_file.write_text("from phonebridge import Agent\nagent = Agent(instructions='x'\n")
            os.utime(agent_file, ns=(2 * 10**9, 2 * 10**9))
            assert server.reload_if_changed()  # a broken edit: its error shows on the page
            await _wait(page, "!document.getElementById('agent-error').hidden")
            assert "SyntaxError" in await page.evaluate("document.getElementById('agent-error').innerText")
            await page.screenshot(tmp_path / "softphone-agent-error.png")

            await page.evaluate("softphone.hangUp()")
            await _wait(page, "softphone.state.events.some(e => e.kind === 'call_end')")
            (end,) = [e for e in await page.evaluate("softphone.state.events") if e["kind"] == "call_end"]
            assert end["stats"]["outcome"] == "caller_hung_up" and end["stats"]["dtmf"] == ["5"]
            # Every frame the page sent parsed as Twilio's, in one unbroken sequence (media, marks, dtmf, stop).
            assert (end["stats"]["malformed"], end["stats"]["ignored"], end["stats"]["lost_frames"]) == (0, 0, 0)
            assert end["stats"]["frames_in"] >= await page.evaluate("softphone.state.framesSent") - 5
            assert page.errors == []

            # Afterwards the call opens in the viewer, over HTTP with its CSP header, from the panel's link.
            assert await server.app[RUNTIME].wait_idle(10)  # the cassette is closed
            await _wait(page, "document.getElementById('viewer-link') !== null")
            viewer = await browser.open(await page.evaluate("document.getElementById('viewer-link').href"))
            assert await viewer.evaluate("window.__inspect && window.__inspect.ready") is True  # its script ran
            assert "lookup_order" in await viewer.evaluate("document.getElementById('log').innerText")
            await viewer.screenshot(tmp_path / "viewer.png")
            listing = await browser.open(await page.evaluate("document.getElementById('calls-link').href"))
            assert "caller_hung_up" in await listing.evaluate("document.body.innerText")
            assert viewer.errors == [] and listing.errors == []
    finally:
        await server.stop()
    assert list((tmp_path / "calls").glob("CA*.jsonl"))  # the call was recorded like any other



WORKLETS = """(() => {
  const classes = {};
  class Base { constructor() { const posted = []; this.port = { posted, postMessage: (m) => posted.push(m) }; } }
  const load = (rate) => {
    new Function("AudioWorkletProcessor", "registerProcessor", "sampleRate", "currentTime", SOURCE)(
      Base, (name, cls) => { classes[name] = cls; }, rate, 0);
    return classes;
  };
  const codec = new Function("AudioWorkletProcessor", "registerProcessor", "sampleRate", "currentTime",
                             SOURCE + "\\nreturn {ulawEncode, DECODE};")(Base, () => {}, 8000, 0);
  const encoded = [];
  for (let v = -32768; v < 32768; v++) encoded.push(codec.ulawEncode(v / 32767));
  const decoded = Array.from(codec.DECODE, (x) => Math.round(x * 32768));

  // The microphone at 48 kHz (a context that would not run at 8 kHz): 1 s of 440 Hz in 128-sample blocks.
  const capture = new (load(48000)["phonebridge-capture"])();
  for (let b = 0; b < 375; b++) {
    const block = new Float32Array(128);
    for (let i = 0; i < 128; i++) block[i] = 0.5 * Math.sin(2 * Math.PI * 440 * (b * 128 + i) / 48000);
    capture.process([[block]]);
  }
  const frames = capture.port.posted.filter((m) => m.type === "frame").map((m) => Array.from(m.ulaw));

  // The playback buffer at 8 kHz: a mark after 320 samples comes back once they have played.
  const player = new (load(8000)["phonebridge-player"])();
  const block = () => { const out = [[new Float32Array(128)]]; player.process([], out); return out[0][0]; };
  const marks = () => player.port.posted.filter((m) => m.type === "mark").map((m) => m.name);
  player.onMessage({ type: "mark", name: "idle" });            // nothing queued: echoed at once
  const atOnce = marks();
  player.onMessage({ type: "media", ulaw: new Uint8Array(320).fill(0x10) });
  player.onMessage({ type: "mark", name: "after-320" });
  const loud = block(); block();                                // 256 samples played
  const before = marks();
  block();                                                      // 384: the mark's audio has played
  const after = marks();
  player.onMessage({ type: "media", ulaw: new Uint8Array(800).fill(0x10) });
  player.onMessage({ type: "mark", name: "pending" });
  player.onMessage({ type: "clear" });
  const cleared = player.port.posted.find((m) => m.type === "cleared");
  const silent = block();
  return { encoded, decoded, frames, atOnce, before, after, cleared,
           loudPeak: Math.max(...loud.map(Math.abs)), silentPeak: Math.max(...silent.map(Math.abs)) };
})()"""


async def test_the_worklets_mu_law_resampler_and_playback_buffer(chromium_path):
    source = (Path(__file__).resolve().parent.parent / "phonebridge" / "softphone" / "worklets.js").read_text()
    async with Chromium(None, chromium_path) as browser:
        page = await browser.open("about:blank")
        result = await page.evaluate(WORKLETS.replace("SOURCE", json.dumps(source)))
    # mu-law bit-exact with the bridge's (audioop), over every 16-bit sample and every byte
    every_sample = b"".join(v.to_bytes(2, "little", signed=True) for v in range(-32768, 32768))
    assert bytes(result["encoded"]) == ulaw_encode(every_sample)
    decoded = ulaw_decode(bytes(range(256)))
    assert result["decoded"] == [int.from_bytes(decoded[i : i + 2], "little", signed=True) for i in range(0, 512, 2)]
    # 48 kHz in, 20 ms frames of 8 kHz mu-law out: the tone keeps its pitch and level
    frames = result["frames"]
    assert len(frames) == 50 and all(len(f) == 160 for f in frames)
    pcm = np.frombuffer(ulaw_decode(bytes(b for f in frames[5:] for b in f)), dtype="<i2") / 32768
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(np.argmax(spectrum) * 8000 / len(pcm) - 440) < 10
    assert 0.3 < np.sqrt(np.mean(pcm**2)) < 0.4  # 0.5 / sqrt(2) = 0.354
    # Twilio's buffer: marks wait for the audio before them; clear drops what is queued and echoes the rest
    assert result["atOnce"] == ["idle"] and result["before"] == ["idle"]
    assert result["after"] == ["idle", "after-320"]
    assert result["cleared"]["dropped"] == 800 and result["cleared"]["marks"] == ["pending"]
    assert result["loudPeak"] > 0.1 and result["silentPeak"] == 0
