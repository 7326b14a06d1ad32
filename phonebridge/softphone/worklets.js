// The softphone's two AudioWorklet processors: the microphone as 8 kHz mu-law in 20 ms frames, and a
// playback buffer with Twilio's semantics (media plays in order, a mark is echoed when the audio queued
// before it has played, clear empties the buffer and echoes every pending mark). No build step.

const FRAME = 160; // 20 ms of 8 kHz mu-law: what Twilio sends per media message
const BIAS = 0x84;
const SEG_END = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];

// float -1..1 -> one G.711 mu-law byte, bit-exact with Python's audioop.lin2ulaw (and so with the bridge):
// the sample is taken to 14 bits with an arithmetic shift, as audioop does, before the segment search.
function ulawEncode(sample) {
  let value = Math.round(Math.max(-1, Math.min(1, sample)) * 32767) >> 2;
  let mask = 0xff;
  if (value < 0) { value = -value; mask = 0x7f; }
  if (value > 8159) value = 8159;
  value += BIAS >> 2;
  let segment = 0;
  while (segment < 8 && value > SEG_END[segment]) segment++;
  if (segment >= 8) return 0x7f ^ mask;
  return ((segment << 4) | ((value >> (segment + 1)) & 0x0f)) ^ mask;
}

const DECODE = new Float32Array(256);
for (let i = 0; i < 256; i++) {
  const u = ~i & 0xff;
  const exponent = (u >> 4) & 0x07, mantissa = u & 0x0f;
  const magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
  DECODE[i] = ((u & 0x80) ? -magnitude : magnitude) / 32768;
}

// Microphone -> 8 kHz (the context runs at 8 kHz when the browser allows it; otherwise a linear
// resampler with a one-pole low-pass in front) -> mu-law frames posted to the page.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / 8000; // input samples per output sample
    this.phase = 0;
    this.previous = 0;
    this.smoothed = 0;
    this.alpha = this.step > 1 ? 1 - Math.exp(-2 * Math.PI * 3400 / sampleRate) : 1;
    this.frame = new Uint8Array(FRAME);
    this.filled = 0;
    this.muted = false;
    this.peak = 0;
    this.port.onmessage = (e) => { if (e.data.type === "mute") this.muted = e.data.muted; };
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    for (let i = 0; i < input.length; i++) {
      this.smoothed += this.alpha * (input[i] - this.smoothed);
      const current = this.smoothed;
      while (this.phase < 1) { // emit every output sample that falls between previous and current
        const value = this.previous + (current - this.previous) * this.phase;
        this.push(this.muted ? 0 : value);
        this.phase += this.step;
      }
      this.phase -= 1;
      this.previous = current;
    }
    return true;
  }

  push(value) {
    this.peak = Math.max(this.peak, Math.abs(value));
    this.frame[this.filled++] = ulawEncode(value);
    if (this.filled === FRAME) {
      this.port.postMessage({ type: "frame", ulaw: this.frame, peak: this.peak }, [this.frame.buffer]);
      this.frame = new Uint8Array(FRAME);
      this.filled = 0;
      this.peak = 0;
    }
  }
}

// The playback buffer: a queue of audio chunks and marks, played at the context's rate (8 kHz mu-law
// samples are held up to `step` output samples each when the context runs faster).
class PlayerProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = 8000 / sampleRate; // input samples consumed per output sample
    this.queue = []; // {audio: Float32Array, offset} | {mark: name}
    this.buffered = 0; // 8 kHz samples queued and not yet played
    this.played = 0;
    this.position = 0; // fractional read position in the head chunk
    this.lastReport = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === "media") {
      const audio = new Float32Array(msg.ulaw.length);
      for (let i = 0; i < msg.ulaw.length; i++) audio[i] = DECODE[msg.ulaw[i]];
      this.queue.push({ audio });
      this.buffered += audio.length;
    } else if (msg.type === "mark") {
      this.queue.push({ mark: msg.name });
      this.settle(); // nothing queued before it: echoed at once
    } else if (msg.type === "clear") {
      const dropped = this.buffered;
      const marks = this.queue.filter((item) => item.mark !== undefined).map((item) => item.mark);
      this.queue = [];
      this.buffered = 0;
      this.position = 0;
      this.port.postMessage({ type: "cleared", dropped, marks, played: this.played });
    }
    this.report(true);
  }

  settle() { // echo marks that reached the head of the queue
    while (this.queue.length && this.queue[0].mark !== undefined) {
      this.port.postMessage({ type: "mark", name: this.queue.shift().mark, played: this.played });
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    for (let i = 0; i < out.length; i++) {
      this.settle();
      const head = this.queue[0];
      if (!head) { out[i] = 0; continue; }
      const index = Math.floor(this.position);
      out[i] = head.audio[index];
      this.position += this.step;
      const consumed = Math.floor(this.position) - index;
      this.played += consumed;
      this.buffered -= consumed;
      if (this.position >= head.audio.length) {
        this.position -= head.audio.length;
        this.queue.shift();
      }
    }
    this.settle();
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.report(false);
    return true;
  }

  report(now) {
    if (now || currentTime - this.lastReport >= 0.05) {
      this.lastReport = currentTime;
      this.port.postMessage({ type: "status", played: this.played, buffered: this.buffered });
    }
  }
}

registerProcessor("phonebridge-capture", CaptureProcessor);
registerProcessor("phonebridge-player", PlayerProcessor);
