"""`phonebridge demo`, the README's first command, run as a user runs it: a subprocess, offline, no keys."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import wave


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

    from phonebridge.agent import load_agent
    from phonebridge.demo import DEFAULT_AGENT, demo_call
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
    frames = spoken[: len(spoken) // 80 * 80].reshape(-1, 80)[: int(30 * 100)]  # whole 10 ms frames from its start
    quiet = np.all(frames == 0, axis=1)
    run_end = next(i for i in range(len(quiet) - 40) if quiet[i:i + 40].all())  # 0.4 s of digital silence
    assert abs(run_end / 100 - len(mono) / 44100) < 0.25
