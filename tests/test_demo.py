"""`phonebridge demo`, the README's first command, run as a user runs it: a subprocess, offline, no keys."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import wave

import pytest


def test_the_demo_command_runs_offline_and_writes_the_call(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI", "GOOGLE", "TWILIO", "PHONEBRIDGE"))}
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "phonebridge.cli", "demo", "--out", str(out), "--speed", "20"],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    transcript = done.stdout
    for line in ("agent : Hi, thanks for calling Luigi's pizzeria!", "caller: Hi! Which vegetarian pizzas do you have?",
                 "-> tool get_menu(vegetarian_only=True)", "<- order_status ok", "!! caller barged in",
                 "-> tool end_call()", "call ended: agent_hung_up"):
        assert line in transcript, transcript
    voice = "espeak-ng (spoken words)" if shutil.which("espeak-ng") else "built-in babble"
    assert f"caller voice: {voice}" in transcript, transcript
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["outcome"] == "agent_hung_up" and summary["barge_ins"] == 1
    assert [t["name"] for t in summary["tool_calls"]] == ["get_menu", "order_status", "end_call"]
    with wave.open(str(out / "call.wav")) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
        assert wav.getnframes() / 8000 > 5.0
    (cassette,) = out.glob("CA*.jsonl")
    assert stat.S_IMODE(cassette.stat().st_mode) == 0o600


async def test_the_demo_plays_the_users_own_recording_at_any_rate_and_channel_count(tmp_path):
    import io

    import numpy as np

    from phonebridge.agent.definition import load_agent
    from phonebridge.demo.cli import DEFAULT_AGENT, demo_call
    from phonebridge.testing.speech import synth_speech

    mono = np.frombuffer(synth_speech("Hello, which pizzas are vegetarian?", 44100), dtype="<i2")
    path = tmp_path / "me.wav"
    with wave.open(str(path), "wb") as wav:  # 44.1 kHz stereo, as a phone or laptop records
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44100)
        wav.writeframes(np.repeat(mono, 2).tobytes())
    summary = await demo_call(load_agent(DEFAULT_AGENT), tmp_path / "out", speed=20.0, caller_audio=str(path),
                              out=io.StringIO())
    assert summary["ok"], summary
    with wave.open(str(tmp_path / "out" / "call.wav")) as wav:
        caller = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")[0::2]
    # The recording was converted to 8 kHz mono and is the caller's first utterance, at its own length.
    first = np.flatnonzero(caller)[0]
    spoken = caller[first:]
    frames = spoken[: len(spoken) // 80 * 80].reshape(-1, 80)[: (30 * 100)]  # whole 10 ms frames from its start
    quiet = np.all(frames == 0, axis=1)
    run_end = next(i for i in range(len(quiet) - 40) if quiet[i:i + 40].all())  # 0.4 s of digital silence
    assert abs(run_end / 100 - len(mono) / 44100) < 0.25


BISTRO = '''
from phonebridge import Agent

agent = Agent(instructions="You book tables at a small bistro.")

@agent.tool
async def book_table(date: str, party_size: int) -> dict:
    """Book a table. date is YYYY-MM-DD."""
    return {"booked": True, "date": date, "party_size": party_size}

@agent.tool
def opening_hours(day: str) -> str:
    """Opening hours for a day, e.g. monday."""
    return "noon to ten"
'''


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("GEMINI", "GOOGLE", "TWILIO", "PHONEBRIDGE"))}


def test_the_demo_of_another_agent_exercises_that_agents_own_tools(tmp_path):
    (tmp_path / "bistro.py").write_text(BISTRO)
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "phonebridge.cli", "demo", "--agent", str(tmp_path / "bistro.py"), "--out", str(out),
         "--speed", "20"],
        env=_clean_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "script: derived from the agent's tools (book_table, opening_hours)" in done.stdout
    assert "-> tool opening_hours(day='monday')" in done.stdout and "<- book_table ok" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and summary["outcome"] == "agent_hung_up", summary
    assert [(t["name"], t["status"]) for t in summary["tool_calls"]] == [
        ("book_table", "ok"), ("opening_hours", "ok"), ("end_call", "ok")]
    assert "pizzeria" not in done.stdout.lower()


async def test_a_script_calling_tools_the_agent_lacks_is_never_ok(tmp_path):
    """What the demo did before: the pizzeria script against any agent, its tools `unknown`, and `ok`."""
    import io

    from phonebridge.agent.definition import load_agent
    from phonebridge.demo.cli import CALLER_LINES, Plan, demo_call
    from phonebridge.testing.demo_script import demo_script

    (tmp_path / "bistro.py").write_text(BISTRO)
    pizzeria = Plan("pizzeria", demo_script(), CALLER_LINES, barge_in=True, agent_ends=True)
    summary = await demo_call(load_agent(str(tmp_path / "bistro.py")), tmp_path / "out", speed=20.0,
                              out=io.StringIO(), plan=pizzeria)
    assert not summary["ok"]
    assert any("'get_menu' came back unknown" in p for p in summary["problems"]), summary["problems"]


async def test_printed_times_are_where_the_events_are_in_the_wav(tmp_path):
    """At the default 3x speed, the barge-in is printed at the time the agent's audio stops in call.wav."""
    import io
    import re

    import numpy as np

    from phonebridge.agent.definition import load_agent
    from phonebridge.demo.cli import DEFAULT_AGENT, demo_call

    printed = io.StringIO()
    summary = await demo_call(load_agent(DEFAULT_AGENT), tmp_path, speed=3.0, out=printed)
    assert summary["ok"], summary
    (at,) = [float(m) for m in re.findall(r"^\s*([\d.]+)s\s+!! caller barged in", printed.getvalue(), re.MULTILINE)]
    with wave.open(str(tmp_path / "call.wav")) as wav:
        heard = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")[1::2]
    sound = np.abs(heard[: len(heard) // 160 * 160].reshape(-1, 160)).max(axis=1) > 0  # 20 ms frames
    # Within a second either side of the printed time, the agent's answer is heard until the clear, and
    # nothing after it (the goodbye comes once the caller's 3 s line has ended).
    first = int((at - 1.0) / 0.02)
    window = np.flatnonzero(sound[first:int((at + 1.0) / 0.02)])
    cut = (first + window[-1] + 1) * 0.02
    # Two frames either way, and before it also the emulator voice's 70 ms word gap the clear may land in.
    assert at - 0.04 - 0.07 <= cut <= at + 0.04, (cut, at)


def test_the_demo_says_which_voice_its_caller_speaks_with(tmp_path, monkeypatch):
    import io

    from phonebridge.agent.definition import load_agent
    from phonebridge.demo.cli import DEFAULT_AGENT, demo_call
    from phonebridge.testing import speech

    assert speech.speech_engine() == ("espeak-ng" if shutil.which("espeak-ng") else "babble")
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng here
    assert speech.speech_engine() == "babble"
    printed = io.StringIO()
    summary = asyncio.run(demo_call(load_agent(DEFAULT_AGENT), tmp_path / "out", speed=20.0, out=printed))
    assert summary["ok"] and summary["caller_voice"] == "babble", summary
    assert "caller voice: built-in babble" in printed.getvalue()


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="espeak-ng is not installed (.ci/packages.txt has it)")
def test_with_espeak_ng_the_caller_speaks_words_in_one_turn():
    import numpy as np

    from phonebridge.testing.speech import rms_dbfs, speak, synth_speech

    words = speak("Which vegetarian pizzas do you have?", 8000, engine="espeak-ng")
    assert words != synth_speech("Which vegetarian pizzas do you have?", 8000)
    assert 1.0 < len(words) / 16000 < 4.0 and abs(rms_dbfs(words) + 18) < 1.5
    # One utterance for a voice activity detector: no 300 ms of quiet inside it.
    frames = np.frombuffer(words, dtype="<i2")[: len(words) // 2 // 80 * 80].reshape(-1, 80)
    quiet = np.sqrt(np.mean(frames.astype(float) ** 2, axis=1)) < 32768 * 10 ** (-40 / 20)
    assert max((len(r) for r in "".join("q" if q else "." for q in quiet).split(".")), default=0) < 30


def test_live_with_an_unreachable_model_ends_clearly_within_seconds(tmp_path):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**_clean_env(), "GEMINI_API_KEY": "not-a-key", "GOOGLE_GEMINI_BASE_URL": f"http://127.0.0.1:{port}"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "phonebridge.cli", "demo", "--live", "--out", str(tmp_path / "demo")],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "phonebridge demo: the model could not be reached" in done.stderr
    assert "call ended: model_unavailable" in done.stdout
    assert elapsed < 20, elapsed
