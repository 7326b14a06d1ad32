"""PlaybackBuffer: Twilio's playback queue with an injected clock (plain functions, no event loop)."""

from __future__ import annotations

from phonebridge.testing.playback import PlaybackBuffer

A = b"\x01" * 800  # 100 ms at 8000 bytes/s
B = b"\x02" * 400  # 50 ms


def test_audio_plays_at_8000_bytes_a_second_from_when_it_arrived() -> None:
    buf = PlaybackBuffer()
    assert buf.enqueue(A, now=1.0) == []
    assert buf.advance(1.0) == (b"", [])
    assert buf.advance(1.05) == (b"\x01" * 400, [])
    assert buf.buffered_bytes == 400
    assert buf.drain_time() == 1.1
    assert buf.advance(5.0) == (b"\x01" * 400, [])
    assert buf.buffered_bytes == 0 and buf.drain_time() is None


def test_mark_on_an_empty_buffer_is_echoed_at_once() -> None:
    buf = PlaybackBuffer()
    assert buf.mark("m0", now=0.0) == ["m0"]
    buf.enqueue(A, now=0.0)
    assert buf.advance(0.2) == (A, [])
    assert buf.mark("m1", now=0.2) == ["m1"]


def test_mark_comes_due_exactly_when_the_audio_before_it_has_played() -> None:
    buf = PlaybackBuffer()
    buf.enqueue(A, now=0.0)
    assert buf.mark("after-a", now=0.0) == []
    buf.enqueue(B, now=0.01)
    assert buf.mark("after-b", now=0.01) == []
    assert buf.pending_marks == ("after-a", "after-b")
    assert buf.next_mark_time() == 0.1
    assert buf.advance(0.0999) == (b"\x01" * 799, [])
    assert buf.advance(0.1) == (b"\x01", ["after-a"])
    assert buf.next_mark_time() == 0.15
    assert buf.advance(0.12) == (b"\x02" * 160, [])
    assert buf.advance(1.0) == (b"\x02" * 240, ["after-b"])
    assert buf.pending_marks == ()


def test_a_late_advance_reports_due_marks_in_queue_order() -> None:
    buf = PlaybackBuffer()
    buf.enqueue(A, now=0.0)
    buf.mark("1", now=0.0)
    buf.enqueue(B, now=0.0)
    buf.mark("2", now=0.0)
    buf.mark("3", now=0.0)
    assert buf.advance(10.0) == (A + B, ["1", "2", "3"])


def test_clear_drops_unplayed_audio_and_returns_every_pending_mark() -> None:
    buf = PlaybackBuffer()
    buf.enqueue(A, now=0.0)
    buf.mark("a", now=0.0)
    buf.enqueue(B, now=0.0)
    buf.mark("b", now=0.0)
    assert buf.clear(now=0.05) == ["a", "b"]
    assert buf.buffered_bytes == 0 and buf.pending_marks == ()
    # What played before the clear is still reported; nothing after it.
    assert buf.advance(1.0) == (b"\x01" * 400, [])
    assert buf.clear(now=1.0) == []


def test_clear_returns_marks_already_due_before_the_pending_ones() -> None:
    buf = PlaybackBuffer()
    buf.enqueue(B, now=0.0)
    buf.mark("due", now=0.0)
    buf.enqueue(A, now=0.0)
    buf.mark("pending", now=0.0)
    assert buf.clear(now=0.06) == ["due", "pending"]


def test_enqueue_and_mark_return_marks_that_came_due_meanwhile() -> None:
    buf = PlaybackBuffer()
    buf.enqueue(B, now=0.0)
    buf.mark("x", now=0.0)
    assert buf.enqueue(A, now=0.2) == ["x"]
    buf.enqueue(B, now=0.25)
    assert buf.mark("y", now=0.3) == []


def test_segments_carry_the_time_each_stretch_began_to_play() -> None:
    buf = PlaybackBuffer()
    buf.enqueue(A, now=1.0)
    buf.enqueue(B, now=1.02)  # queued behind A: plays from 1.1, contiguous with A
    segments, _ = buf.advance_segments(2.0)
    assert segments == [(1.0, A + B)]
    buf.enqueue(B, now=3.0)  # after a gap of silence: a new stretch
    buf.clear(now=3.025)
    segments, _ = buf.advance_segments(4.0)
    assert segments == [(3.0, b"\x02" * 200)]


def test_time_never_goes_backwards_so_a_driver_can_play_instantly() -> None:
    buf = PlaybackBuffer()
    buf.enqueue(A, now=0.0)
    buf.mark("end", now=0.0)
    drain = buf.drain_time()
    assert drain == 0.1
    assert buf.advance(drain) == (A, ["end"])
    buf.enqueue(B, now=0.0)  # an earlier clock reading: taken as 0.1
    segments, _ = buf.advance_segments(buf.drain_time() or 0.0)
    assert segments == [(0.1, B)]


def test_custom_rate() -> None:
    buf = PlaybackBuffer(bytes_per_second=16000)
    buf.enqueue(b"\x00" * 1600, now=0.0)
    assert buf.drain_time() == 0.1
