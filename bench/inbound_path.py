"""Micro-benchmark of the inbound hot path, one Twilio media frame at a time: `python bench/inbound_path.py`.

Three figures, microseconds per frame (best and median batch of the mean CPU time of this thread):
- parse: twilio.protocol.parse_event on a real media frame;
- core: Call.receive_twilio(text, now) on an opened call, with the frames' JSON built as the tests build it;
- core+transcode: the same, plus call.inbound.process(media.payload), what the pump does before send_audio;
- inbound / outbound: InboundTranscoder.process on a frame's 160 mu-law bytes, OutboundTranscoder.process on
  20 ms of 24 kHz PCM (the resampler's step is shared by both directions).
Each batch gets a fresh opened Call (sequence numbers keep rising, as Twilio's do); building it is not timed.
`--repeat N` batches (default 60) of `--frames F` frames (default 2000). No sockets, no event loop.
Run it at two revisions (e.g. `git archive REV | tar -x -C DIR` and PYTHONPATH=DIR) for a before/after.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import time
from collections.abc import Callable

import phonebridge.twilio.protocol as twilio
from phonebridge.audio import InboundTranscoder, OutboundTranscoder
from phonebridge.call.core import Call
from phonebridge.twilio.stream_guard import StreamGuard

STREAM, CALL, ACCOUNT = "MZ" + "1" * 32, "CA" + "2" * 32, "AC" + "3" * 32


def start_text() -> str:
    return json.dumps({
        "event": "start", "sequenceNumber": "1", "streamSid": STREAM,
        "start": {"streamSid": STREAM, "accountSid": ACCOUNT, "callSid": CALL, "tracks": ["inbound"],
                  "customParameters": {},
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
    })


def media_texts(count: int, seed: int = 17) -> list[str]:
    """Twilio's media frames from sequence number 2 on: 160 random mu-law bytes each, chunk and timestamp."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        seq = i + 2
        payload = base64.b64encode(bytes(rng.randrange(256) for _ in range(160))).decode()
        texts.append(json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": STREAM,
                                 "media": {"track": "inbound", "chunk": str(seq - 1), "timestamp": str(20 * seq),
                                           "payload": payload}}))
    return texts


def opened_call() -> Call:
    call = Call(StreamGuard(), 0.0)
    call.receive_twilio(start_text(), 0.0)
    call.effects()
    return call


def run_parse(texts: list[str]) -> float:
    parse = twilio.parse_event
    begin = time.thread_time_ns()
    for text in texts:
        parse(text)
    return time.thread_time_ns() - begin


def run_core(texts: list[str]) -> float:
    call = opened_call()
    receive = call.receive_twilio
    begin = time.thread_time_ns()
    for text in texts:
        receive(text, 1.0)
    elapsed = time.thread_time_ns() - begin
    assert call.stats.frames_in == len(texts) and call.stats.lost_frames == 0
    return elapsed


def run_core_transcode(texts: list[str]) -> float:
    call = opened_call()
    receive, process = call.receive_twilio, call.inbound.process
    begin = time.thread_time_ns()
    for text in texts:
        media = receive(text, 1.0)
        if media is not None:
            process(media.payload)
    elapsed = time.thread_time_ns() - begin
    assert call.stats.frames_in == len(texts)
    return elapsed


def run_inbound(texts: list[str]) -> float:
    transcoder = InboundTranscoder()
    process = transcoder.process
    payloads = [base64.b64decode(json.loads(text)["media"]["payload"]) for text in texts]
    begin = time.thread_time_ns()
    for payload in payloads:
        process(payload)
    return time.thread_time_ns() - begin


def run_outbound(texts: list[str]) -> float:
    transcoder = OutboundTranscoder()
    process = transcoder.process
    rng = random.Random(len(texts))
    chunks = [bytes(rng.randrange(256) for _ in range(960)) for _ in range(50)] * (len(texts) // 50)
    begin = time.thread_time_ns()
    for chunk in chunks:
        process(chunk)
    return (time.thread_time_ns() - begin) * len(texts) / len(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=60)
    parser.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args()
    texts = media_texts(args.frames)
    works: dict[str, Callable[[list[str]], float]] = {
        "parse": run_parse, "core": run_core, "core+transcode": run_core_transcode,
        "inbound": run_inbound, "outbound": run_outbound,
    }
    samples: dict[str, list[float]] = {name: [] for name in works}
    for work in works.values():
        work(texts[:200])  # warm-up
    for _ in range(args.repeat):  # the works take turns batch by batch: the machine's noise hits them alike
        for name, work in works.items():
            samples[name].append(work(texts) / len(texts) / 1000)
    for name, values in samples.items():
        print(f"{name:16s} best {min(values):6.2f} us  median {statistics.median(values):6.2f} us per frame")


if __name__ == "__main__":
    main()
