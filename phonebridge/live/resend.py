"""Sans-I/O: what LiveLink sends again on its next connection (time is a parameter).

A resumption handle stands for the session's state when the service issued it: the caller audio and texts
sent after that are not in it, so they are kept here and sent again. The audio is bounded in BYTES, not
frames: a frame count let 48 KB media frames hold 57 MiB a call (300 frames of 192 KB at 16 kHz).
"""

from __future__ import annotations

from collections import deque

# 6 s of 16 kHz PCM16: the documented bound, whatever size the frames come in. Usually one utterance.
REPLAY_BYTES = 6 * 16000 * 2
# The same bound counted in the bridge's own 20 ms frames (640 bytes at 16 kHz).
REPLAY_FRAMES = REPLAY_BYTES // 640
# Texts (greeting prompt, keypad notices) are few and small.
REPLAY_TEXTS = 16


class ResendBuffer:
    """Caller audio and texts since the last confirmed handle, each numbered so they go again in order."""

    def __init__(self, max_audio_bytes: int = REPLAY_BYTES, max_texts: int = REPLAY_TEXTS) -> None:
        self.max_audio_bytes = max_audio_bytes
        self.audio: deque[tuple[int, float, bytes]] = deque()  # (sequence, when sent, pcm)
        self.texts: deque[tuple[int, float, str]] = deque(maxlen=max_texts)
        self.audio_bytes = 0
        self._sequence = 0

    def add_audio(self, pcm: bytes, now: float) -> int:
        """Keep a frame; return how many older frames it pushed out. A frame over the bound keeps its tail."""
        if len(pcm) > self.max_audio_bytes:
            pcm = pcm[len(pcm) - self.max_audio_bytes:]
        self._sequence += 1
        self.audio.append((self._sequence, now, pcm))
        self.audio_bytes += len(pcm)
        dropped = 0
        while self.audio_bytes > self.max_audio_bytes:
            self.audio_bytes -= len(self.audio.popleft()[2])
            dropped += 1
        return dropped

    def add_text(self, text: str, now: float) -> None:
        self._sequence += 1
        self.texts.append((self._sequence, now, text))

    def confirm(self, before: float) -> None:
        """A new handle includes what was sent before `before`: forget it."""
        while self.audio and self.audio[0][1] < before:
            self.audio_bytes -= len(self.audio.popleft()[2])
        while self.texts and self.texts[0][1] < before:
            self.texts.popleft()

    def pending(self, after: int) -> list[tuple[int, bytes | str]]:
        """What was kept with a sequence number above `after`, audio and texts merged in their order."""
        audio: list[tuple[int, bytes | str]] = [(seq, pcm) for seq, _, pcm in self.audio if seq > after]
        texts: list[tuple[int, bytes | str]] = [(seq, text) for seq, _, text in self.texts if seq > after]
        return sorted(audio + texts, key=lambda item: item[0])

    def restamp(self, now: float) -> None:
        """Everything was just sent again: only a handle issued after `now` includes it."""
        self.audio = deque((seq, now, pcm) for seq, _, pcm in self.audio)
        self.texts = deque(((seq, now, text) for seq, _, text in self.texts), maxlen=self.texts.maxlen)

    def clear(self) -> None:
        self.audio.clear()
        self.texts.clear()
        self.audio_bytes = 0
