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
