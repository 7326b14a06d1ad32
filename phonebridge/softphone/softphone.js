// phonebridge dev's softphone: a browser call leg speaking Twilio Media Streams JSON to the bridge's own
// /twilio/media handler. The page asks /dev/call for what Twilio would send (CallSid, streamSid and the
// <Stream>'s <Parameter>s from the bridge's own voice webhook), then sends connected / start / media /
// dtmf / mark / stop exactly as Twilio does, and plays the bridge's media with Twilio's buffer semantics.
// The panel is fed by the call's observer events over /dev/events. `window.softphone` is the page's state,
// read by the browser tests.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
const state = {
  phase: "idle", callSid: "", streamSid: "", viewerPath: null, muted: false, ready: false,
  framesSent: 0, mediaReceived: 0, playedSamples: 0, bufferedSamples: 0, maxBufferedSamples: 0,
  clears: [], marksEchoed: 0, dtmf: [], events: [], firstAudioMs: null, agent: null, errors: [],
};
const waiters = new Set();
let call = null; // {ws, ctx, mic, capture, player, seq, chunk, startedAt}

function notify() {
  for (const w of [...waiters]) {
    let ok = false;
    try { ok = w.predicate(); } catch (e) { ok = false; }
    if (ok) { waiters.delete(w); clearTimeout(w.timer); w.resolve(true); }
  }
}

function waitFor(predicate, timeoutMs = 10000) { // resolves true when predicate() holds, false on timeout
  return new Promise((resolve) => {
    if (predicate()) return resolve(true);
    const w = { predicate, resolve };
    w.timer = setTimeout(() => { waiters.delete(w); resolve(false); }, timeoutMs);
    waiters.add(w);
  });
}

// ---- the panel -----------------------------------------------------------------------------------------

function elapsed() {
  return call ? ((performance.now() - call.startedAt) / 1000).toFixed(2) + " s" : "";
}

function line(kind, text) {
  const row = document.createElement("div");
  row.className = "row " + kind;
  const at = document.createElement("span");
  at.className = "at";
  at.textContent = elapsed();
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  row.append(at, body);
  $("log").append(row);
  $("log").scrollTop = $("log").scrollHeight;
}

function viewerLink(path) { // the ended call in the viewer: a link, not text, so it is built as an element
  const row = document.createElement("div");
  row.className = "row info";
  const link = document.createElement("a");
  link.id = "viewer-link";
  link.href = path;
  link.target = "_blank";
  link.rel = "noopener noreferrer";
  link.textContent = "open this call in the viewer";
  row.append(document.createElement("span"), link);
  row.firstChild.className = "at";
  $("log").append(row);
}

const short = (value) => { const s = JSON.stringify(value); return s.length > 160 ? s.slice(0, 157) + "..." : s; };

function onEvent(ev) {
  if (ev.kind === "agent") return showAgent(ev);
  if (ev.kind === "dev_error") { line("error", ev.error); return; }
  if (!state.callSid || ev.call_sid !== state.callSid) return; // another tab's call
  state.events.push(ev);
  switch (ev.kind) {
    case "call_start": line("info", "call started: " + ev.call_sid); break;
    case "transcript": line(ev.who === "caller" ? "caller" : "agent", (ev.who === "caller" ? "you: " : "agent: ") + ev.text); break;
    case "tool_call": line("tool", `→ ${ev.name}(${short(ev.args)})`); break;
    case "tool_result":
      line(ev.status === "ok" ? "tool" : "error",
        `← ${ev.name} ${ev.status} in ${(ev.latency_s * 1000).toFixed(1)} ms: ${short(ev.response)}`);
      break;
    case "barge_in": line("barge", `barge-in: you cut in after ${ev.heard_s.toFixed(2)} s of the agent's turn`); break;
    case "reconnect": line("info", "model reconnected (" + ev.cause + ")"); break;
    case "hang_up": line("info", "the agent hung up"); break;
    case "transfer": line("info", "the agent transferred the call to " + ev.target); break;
    case "call_end": {
      const s = ev.stats, first = s.first_audio_s == null ? "never" : (s.first_audio_s * 1000).toFixed(0) + " ms";
      line("info", `call ended: ${s.outcome}; ${s.turns} turns, ${s.barge_ins} barge-ins, ${s.tool_calls} tool calls, first audio ${first} (bridge)`);
      if (state.viewerPath) viewerLink(state.viewerPath); // the cassette is complete once the stream closes
      break;
    }
  }
  notify();
}

function showAgent(status) {
  const previous = state.agent; // the event stream sends the status again each time it reconnects
  const changed = !previous || previous.version !== status.version || previous.error !== status.error;
  state.agent = status;
  state.ready = true;
  $("agent").textContent = `${status.spec} · v${status.version} · tools: ${status.tools.join(", ") || "none"} · model: ${status.model}`;
  $("agent-error").textContent = status.error || "";
  $("agent-error").hidden = !status.error;
  if (changed && status.error) line("error", "agent failed to load; still running the last good version");
  else if (changed && previous) line("info", `agent reloaded (v${status.version}); the next call uses it`);
  setPhase(state.phase);
  notify();
}

function setPhase(phase) {
  state.phase = phase;
  $("status").textContent = phase;
  $("call").disabled = !state.ready || phase !== "idle";
  $("hangup").disabled = phase === "idle";
  for (const key of document.querySelectorAll("#keypad button")) key.disabled = phase !== "in call";
  notify();
}

// ---- the call -----------------------------------------------------------------------------------------

function send(obj) {
  if (call && call.ws.readyState === WebSocket.OPEN) call.ws.send(JSON.stringify(obj));
}

function sequenced(event, body) { // Twilio numbers every event after `connected` in one sequence
  call.seq += 1;
  send({ event, sequenceNumber: String(call.seq), streamSid: state.streamSid, ...body });
}

function b64(bytes) { let s = ""; for (const b of bytes) s += String.fromCharCode(b); return btoa(s); }
function unb64(text) { const s = atob(text); const out = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i); return out; }

async function startCall() {
  setPhase("dialling");
  $("log").textContent = "";
  try {
    const answer = await fetch("/dev/call?token=" + encodeURIComponent(token), { method: "POST" });
    const info = await answer.json();
    if (!answer.ok) throw new Error(info.error || answer.statusText);
    const mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true, channelCount: 1 } });
    const [ctx, source] = await audioContext(mic);
    await ctx.audioWorklet.addModule("/softphone/worklets.js");
    const capture = new AudioWorkletNode(ctx, "phonebridge-capture", { numberOfOutputs: 0 });
    const player = new AudioWorkletNode(ctx, "phonebridge-player", { numberOfInputs: 0, outputChannelCount: [1] });
    player.connect(ctx.destination);
    source.connect(capture);
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}${info.mediaPath}`);
    call = { ws, ctx, mic, capture, player, seq: 0, chunk: 0, startedAt: performance.now(), sentStartAt: 0,
      accountSid: info.accountSid, ended: false };
    state.callSid = info.callSid; state.streamSid = info.streamSid; state.viewerPath = info.viewerPath || null;
    Object.assign(state, { framesSent: 0, mediaReceived: 0, playedSamples: 0, bufferedSamples: 0, maxBufferedSamples: 0, clears: [], marksEchoed: 0, dtmf: [], events: [], firstAudioMs: null });
    capture.port.postMessage({ type: "mute", muted: state.muted });
    ws.onopen = () => onOpen(info);
    ws.onmessage = (e) => onMedia(e.data);
    ws.onclose = (e) => endCall(`the bridge closed the stream (${e.code})`);
    capture.port.onmessage = (e) => onFrame(e.data);
    player.port.onmessage = (e) => onPlayer(e.data);
  } catch (err) {
    state.errors.push(String(err));
    line("error", "cannot place the call: " + err.message);
    await teardown();
    setPhase("idle");
  }
}

async function audioContext(mic) {
  // The phone's own rate, so the browser resamples the microphone well; where a browser refuses (some
  // cannot connect a microphone to a context of another rate), its own rate, and the worklets resample.
  let ctx, source;
  try {
    ctx = new AudioContext({ sampleRate: 8000, latencyHint: "interactive" });
    source = ctx.createMediaStreamSource(mic);
  } catch (e) {
    if (ctx) ctx.close();
    ctx = new AudioContext({ latencyHint: "interactive" });
    source = ctx.createMediaStreamSource(mic);
  }
  if (ctx.state === "suspended") await ctx.resume();
  return [ctx, source];
}

function onOpen(info) {
  send({ event: "connected", protocol: "Call", version: "1.0.0" });
  sequenced("start", { start: {
    streamSid: info.streamSid, accountSid: info.accountSid, callSid: info.callSid, tracks: ["inbound"],
    customParameters: info.customParameters, mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
  } });
  call.sentStartAt = performance.now();
  line("info", `calling as ${info.customParameters.From || "?"}: start sent with ${Object.keys(info.customParameters).length} parameters`);
  setPhase("in call");
}

function onFrame(msg) { // one 20 ms mu-law frame from the microphone
  if (!call || state.phase !== "in call" || msg.type !== "frame") return;
  call.chunk += 1;
  sequenced("media", { media: { track: "inbound", chunk: String(call.chunk), timestamp: String((call.chunk - 1) * 20), payload: b64(msg.ulaw) } });
  state.framesSent += 1;
  $("level").value = msg.peak;
}

function onMedia(text) { // what the bridge sends: media, mark, clear
  if (call.ended) return;
  let msg;
  try { msg = JSON.parse(text); } catch (e) { state.errors.push("bad JSON from the bridge"); return; }
  if (msg.event === "media") {
    if (state.firstAudioMs === null) {
      state.firstAudioMs = performance.now() - call.sentStartAt;
      line("info", `first audio ${state.firstAudioMs.toFixed(0)} ms after start`);
    }
    state.mediaReceived += 1;
    const ulaw = unb64(msg.media.payload);
    call.player.port.postMessage({ type: "media", ulaw }, [ulaw.buffer]);
  } else if (msg.event === "mark") {
    call.player.port.postMessage({ type: "mark", name: msg.mark.name });
  } else if (msg.event === "clear") {
    call.player.port.postMessage({ type: "clear" });
  }
  notify();
}

function onPlayer(msg) {
  if (!call || call.ended) return;
  if (msg.type === "mark") echoMark(msg.name);
  else if (msg.type === "cleared") {
    state.clears.push({ droppedSamples: msg.dropped, atPlayed: msg.played });
    line("barge", `clear: dropped ${(msg.dropped / 8).toFixed(0)} ms of buffered agent audio`);
    msg.marks.forEach(echoMark);
    state.bufferedSamples = 0;
  } else if (msg.type === "status") {
    state.playedSamples = msg.played;
    state.bufferedSamples = msg.buffered;
    state.maxBufferedSamples = Math.max(state.maxBufferedSamples, msg.buffered);
    $("buffer").textContent = `${(msg.buffered / 8).toFixed(0)} ms buffered · ${(msg.played / 8000).toFixed(1)} s played`;
  }
  notify();
}

function echoMark(name) {
  sequenced("mark", { mark: { name } });
  state.marksEchoed += 1;
}

function press(digit) {
  if (!call || state.phase !== "in call") return;
  sequenced("dtmf", { dtmf: { track: "inbound_track", digit } });
  state.dtmf.push(digit);
  line("caller", "you pressed " + digit);
}

function setMuted(muted) {
  state.muted = muted;
  $("mute").textContent = muted ? "Unmute" : "Mute";
  $("mute").classList.toggle("on", muted);
  // Muted, the line carries silence (a phone keeps streaming frames), so the model hears nothing.
  if (call) call.capture.port.postMessage({ type: "mute", muted });
  notify();
}

function hangUp() {
  if (!call) return;
  if (state.phase === "in call") sequenced("stop", { stop: { accountSid: call.accountSid, callSid: state.callSid } });
  endCall("you hung up");
}

async function endCall(why) {
  if (!call || call.ended) return;
  line("info", why);
  await teardown();
  setPhase("idle");
}

async function teardown() {
  const c = call;
  if (!c || c.ended) return;
  c.ended = true;
  c.ws.onclose = null;
  if (c.ws.readyState <= WebSocket.OPEN) c.ws.close(1000);
  c.mic.getTracks().forEach((t) => t.stop());
  await c.ctx.close();
}

function connectEvents() {
  const source = new EventSource("/dev/events?token=" + encodeURIComponent(token));
  source.onmessage = (e) => onEvent(JSON.parse(e.data));
  source.onerror = () => { state.ready = false; setPhase(state.phase); }; // EventSource reconnects by itself
}

function keypad() {
  for (const digit of "123456789*0#") {
    const key = document.createElement("button");
    key.textContent = digit;
    key.dataset.digit = digit;
    key.onclick = () => press(digit);
    $("keypad").append(key);
  }
}

keypad();
$("calls-link").href = "/calls?token=" + encodeURIComponent(token);
$("call").onclick = startCall;
$("hangup").onclick = hangUp;
$("mute").onclick = () => setMuted(!state.muted);
document.addEventListener("keydown", (e) => { if (state.phase === "in call" && "0123456789*#".includes(e.key) && e.key.length === 1) press(e.key); });
setPhase("idle");
connectEvents();
window.softphone = { state, waitFor, startCall, hangUp, press, setMuted };
