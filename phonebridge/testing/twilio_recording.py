"""What a simulated Twilio call sounded like, read off its leg's records (a :class:`LegCore`): what the caller
heard, as mu-law, PCM16 or seconds, what it said, both on the call's timeline, and a stereo WAV of the two.

:class:`CallRecording` is TwilioCaller's base (phonebridge.testing.twilio_caller), which holds the leg; the
views read ``_core`` each time, so a subclass that puts in a LegCore of its own is read the same way.
"""

from __future__ import annotations

from os import PathLike
from typing import ClassVar

from phonebridge.audio import ulaw_decode
from phonebridge.testing.playback import LegCore, render_timeline
from phonebridge.testing.wav import write_stereo_wav


class CallRecording:
    """The audio views of a call; TwilioCaller holds the parts they read."""

    _core: LegCore
    _rate: ClassVar[int]  # the leg's rate: mu-law bytes (samples) a second

    @property
    def media_bytes_received(self) -> int:
        return self._core.media_bytes_received

    def heard(self) -> bytes:
        """mu-law as the caller heard it, in order (cleared audio never played, so it is not here)."""
        return self._core.heard_ulaw()

    def heard_pcm(self) -> bytes:
        return ulaw_decode(self.heard())

    @property
    def heard_seconds(self) -> float:
        return self._core.heard_bytes / self._rate

    @property
    def playback_idle(self) -> bool:
        """Nothing queued in the caller's playback buffer: all the agent audio received so far has played."""
        return self._core.buffer.buffered_bytes == 0

    def heard_timeline(self) -> bytes:
        """What the caller heard as 8 kHz PCM16 on the call's timeline (silence where nothing played)."""
        return render_timeline(self._core.heard, self._rate)

    def sent_pcm(self) -> bytes:
        """What the caller said as 8 kHz PCM16 on the call's timeline."""
        return render_timeline(self._core.sent, self._rate)

    def write_wav(self, path: str | PathLike[str]) -> None:
        """A stereo WAV of the call: the caller on the left, what the caller heard on the right."""
        write_stereo_wav(path, self.sent_pcm(), self.heard_timeline(), self._rate)
