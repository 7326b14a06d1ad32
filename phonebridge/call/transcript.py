"""How the call's transcript is cut into lines: the words of the caller and of the agent gather on two open
lines, and a line closes at its speaker's `finished`, at the turn's boundaries, or at the end of the call.

Pure and synchronous: phonebridge.call.core.Call feeds it the model's transcription events and says when
the turn moves on; each closed line goes to `on_line(who, text, now)` with its words' whitespace normalised.
"""

from __future__ import annotations

from collections.abc import Callable

SPEAKERS = ("caller", "agent")


class Transcript:
    """The two open lines of one call."""

    def __init__(self, on_line: Callable[[str, str, float], None]) -> None:
        self._on_line = on_line
        self._open = dict.fromkeys(SPEAKERS, "")
        self._answering = False  # the model's turn has begun (its first audio or transcript)

    def add(self, who: str, text: str) -> None:
        self._open[who] += text

    def close(self, who: str, now: float) -> None:
        """Close `who`'s line; nothing is written for a line without words."""
        text = " ".join(self._open[who].split())
        self._open[who] = ""
        if text:
            self._on_line(who, text, now)

    def close_caller(self, now: float) -> None:
        """3.1 is reported to send the caller's words without `finished` (google/adk-python#6045 marks the first
        text finished itself; googleapis/js-genai#1429): so the caller's line also closes when the model starts
        answering (its first audio or transcript of a turn: words that trail in during the answer stay one
        line), calls a tool, is interrupted or ends its turn. `finished` still closes it at once, and a closed
        line is empty, so the two never write it twice."""
        self.close("caller", now)

    def answer_begins(self, now: float) -> None:
        """The model's first audio or transcript of a turn: the caller's line closes, once a turn."""
        if not self._answering:
            self._answering = True
            self.close_caller(now)

    def turn_over(self, now: float) -> None:
        """Interrupted or complete: the next audio begins a new answer."""
        self._answering = False
        self.close_caller(now)

    def close_all(self, now: float) -> None:
        for who in SPEAKERS:
            self.close(who, now)
