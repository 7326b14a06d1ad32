"""The call viewer's inline style and script (phonebridge.inspector.html puts them in the page, hashed into its CSP).

The script draws the timeline on a <canvas> from the embedded data (min/max envelopes, events) and plays the
embedded mu-law with Web Audio; the transcript and tool calls are plain HTML, readable without it.
"""

STYLE = """
:root { --caller: #2563eb; --agent: #059669; --tool: #d97706; --barge: #dc2626; --mark: #94a3b8;
  --reconnect: #7c3aed; --dtmf: #0891b2; --ink: #0f172a; --muted: #64748b; --line: #e2e8f0; --bg: #f8fafc; }
* { box-sizing: border-box; }
body { margin: 0; padding: 20px 28px 40px; background: var(--bg); color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
h1 { font-size: 22px; margin: 0 0 4px; font-weight: 650; letter-spacing: -0.01em; }
h2 { font-size: 16px; margin: 0 0 10px; }
.facts { margin: 0 0 10px; color: var(--muted); }
.warning { margin: 6px 0; padding: 6px 10px; background: #fef3c7; border: 1px solid #f59e0b; border-radius: 6px; }
.chips { display: flex; flex-wrap: wrap; gap: 8px; list-style: none; margin: 0 0 16px; padding: 0; }
.chips li { background: #fff; border: 1px solid var(--line); border-radius: 999px; padding: 3px 12px; color: var(--muted); }
.chips b { color: var(--ink); }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; margin-bottom: 16px;
  box-shadow: 0 1px 2px rgba(15, 23, 42, 0.05); }
.controls { display: flex; align-items: center; gap: 8px; flex-wrap: wrap; margin-bottom: 8px; }
button { font: inherit; padding: 3px 12px; border: 1px solid #cbd5e1; border-radius: 6px; background: #fff; cursor: pointer; }
button:hover { background: #f1f5f9; }
#clock { font-variant-numeric: tabular-nums; min-width: 6em; color: var(--muted); }
.note { color: var(--muted); font-size: 13px; }
.legend { margin-left: auto; display: flex; gap: 12px; flex-wrap: wrap; font-size: 13px; color: var(--muted); }
.key::before { content: ""; display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px;
  vertical-align: -1px; background: currentColor; }
.key.caller { color: var(--caller); } .key.agent { color: var(--agent); } .key.tool { color: var(--tool); }
.key.barge { color: var(--barge); } .key.mark { color: var(--mark); } .key.reconnect { color: var(--reconnect); }
.key.dtmf { color: var(--dtmf); }
#scroller { overflow-x: auto; border: 1px solid var(--line); border-radius: 6px; }
#timeline { display: block; cursor: crosshair; }
#log { list-style: none; margin: 0; padding: 0; }
.entry { display: grid; grid-template-columns: 5.5em 7.5em 1fr; gap: 8px; padding: 6px 8px; border-radius: 6px;
  border-left: 3px solid transparent; cursor: pointer; }
.entry:hover { background: #f1f5f9; }
.entry.now { background: #eef2ff; }
.entry .at { color: var(--muted); font-variant-numeric: tabular-nums; white-space: pre; }
.entry .who { font-weight: 600; }
.entry.caller { border-left-color: var(--caller); } .entry.caller .who { color: var(--caller); }
.entry.agent { border-left-color: var(--agent); } .entry.agent .who { color: var(--agent); }
.entry.tool { border-left-color: var(--tool); } .entry.tool .who { color: var(--tool); }
.entry.barge { border-left-color: var(--barge); } .entry.barge .who { color: var(--barge); }
.entry.reconnect .who, .entry.go_away .who { color: var(--reconnect); }
.entry.dtmf .who { color: var(--dtmf); }
.entry.prompt, .entry.stop, .entry.cancel { color: var(--muted); font-size: 14px; }
del.unheard, .quote del { color: #b91c1c; text-decoration-color: #f87171; }
.quote { color: var(--muted); margin-top: 2px; }
code.call { font: 14px ui-monospace, "DejaVu Sans Mono", monospace; background: #fff7ed; padding: 1px 5px; border-radius: 4px; }
.status { font-size: 13px; padding: 0 7px; border-radius: 999px; background: #fee2e2; color: #991b1b; }
.status.ok { background: #dcfce7; color: #166534; }
pre.response { margin: 4px 0 0; padding: 6px 8px; background: #f8fafc; border: 1px solid var(--line); border-radius: 6px;
  font: 13px/1.35 ui-monospace, "DejaVu Sans Mono", monospace; white-space: pre-wrap; max-height: 12em; overflow: auto; }
"""

SCRIPT = r"""
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("call-data").textContent);
  const state = { ready: false, playing: false, position: 0 };
  window.__inspect = state;
  const canvas = document.getElementById("timeline");
  const scroller = document.getElementById("scroller");
  const clock = document.getElementById("clock");
  const playButton = document.getElementById("play");
  const g = canvas.getContext("2d");
  const css = getComputedStyle(document.documentElement);
  const color = name => css.getPropertyValue("--" + name).trim();
  const bytes = s => Uint8Array.from(atob(s), c => c.charCodeAt(0));
  const envelope = e => ({ bucket: e.bucket, lows: new Int8Array(bytes(e.lows).buffer), highs: new Int8Array(bytes(e.highs).buffer) });
  const tracks = { caller: envelope(data.caller), agent: envelope(data.agent) };
  const duration = Math.max(data.duration, 0.001);
  const PAD = 16, H = 320;
  const LANES = { caller: [30, 104], agent: [146, 104], events: [262, 52] };
  let zoom = 1, width = 1000;

  const x = t => PAD + (t / duration) * (width - 2 * PAD);
  const timeAt = px => Math.min(duration, Math.max(0, ((px - PAD) / (width - 2 * PAD)) * duration));

  function layout() {
    const dpr = window.devicePixelRatio || 1;
    width = Math.min(Math.max(scroller.clientWidth, 300) * zoom, 30000 / dpr);
    canvas.style.width = width + "px";
    canvas.style.height = H + "px";
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(H * dpr);
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    draw();
  }

  function ruler() {
    const steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800];
    const step = steps.find(s => (s / duration) * (width - 2 * PAD) >= 80) || 3600;
    g.font = "12px system-ui, sans-serif";
    g.textBaseline = "top";
    for (let t = 0; t <= duration + 1e-9; t += step) {
      g.fillStyle = color("line");
      g.fillRect(Math.round(x(t)), 20, 1, H - 20);
      g.fillStyle = color("muted");
      g.fillText(step < 1 ? t.toFixed(1) + " s" : Math.round(t) + " s", x(t) + 3, 4);
    }
  }

  function wave(name) {
    const [top, height] = LANES[name];
    const mid = top + height / 2, half = height / 2 - 16;
    const env = tracks[name];
    g.fillStyle = name === "caller" ? "#eff6ff" : "#ecfdf5";
    g.fillRect(PAD, top, width - 2 * PAD, height);
    g.fillStyle = color(name);
    g.globalAlpha = 0.85;
    const n = env.lows.length;
    const perPx = n / (width - 2 * PAD);
    for (let px = 0; px < width - 2 * PAD; px++) {
      const a = Math.floor(px * perPx), b = Math.max(a + 1, Math.floor((px + 1) * perPx));
      let lo = 0, hi = 0;
      for (let i = a; i < b && i < n; i++) { lo = Math.min(lo, env.lows[i]); hi = Math.max(hi, env.highs[i]); }
      if (hi - lo < 1) continue;
      const y0 = mid - (hi / 127) * half, y1 = mid - (lo / 127) * half;
      g.fillRect(PAD + px, y0 + 8, 1, Math.max(1, y1 - y0));
    }
    g.globalAlpha = 1;
    g.fillStyle = color(name);
    g.font = "600 12px system-ui, sans-serif";
    g.fillText(name === "caller" ? "CALLER" : "AGENT (heard)", PAD + 4, top + height - 15);
    labels(name, top);
  }

  function labels(who, top) {
    const lines = data.utterances.filter(u => u[1] === who);
    g.font = "13px system-ui, sans-serif";
    g.textBaseline = "top";
    lines.forEach((u, i) => {
      const left = x(u[0]), right = i + 1 < lines.length ? x(lines[i + 1][0]) - 4 : width - PAD;
      if (right - left < 12) return;
      g.save();
      g.beginPath();
      g.rect(left, top + 2, right - left, 18);
      g.clip();
      g.fillStyle = color(who);
      g.fillRect(left, top + 3, 2, 15);
      g.fillStyle = color("ink");
      g.fillText(u[2] + (u[3] ? " …" : ""), left + 5, top + 4);
      g.restore();
    });
  }

  function vline(t, top, bottom, stroke, dash) {
    g.strokeStyle = stroke;
    g.setLineDash(dash || []);
    g.beginPath();
    g.moveTo(Math.round(x(t)) + 0.5, top);
    g.lineTo(Math.round(x(t)) + 0.5, bottom);
    g.stroke();
    g.setLineDash([]);
  }

  function events() {
    const [top, height] = LANES.events;
    g.font = "12px system-ui, sans-serif";
    g.textBaseline = "middle";
    for (const [at, kind, label] of data.events) {
      if (kind === "mark") {
        g.fillStyle = color("mark");
        g.fillRect(Math.round(x(at)), LANES.agent[0] + LANES.agent[1] - 6, 1, 6);
      } else if (kind === "clear") {
        vline(at, LANES.caller[0], top + height, color("barge"));
      } else if (kind === "reconnect" || kind === "go_away") {
        vline(at, 20, H, color("reconnect"), [4, 3]);
        g.fillStyle = color("reconnect");
        g.fillText(kind === "reconnect" ? "reconnect" : "goAway", x(at) + 4, top + height - 8);
      } else if (kind === "dtmf") {
        g.fillStyle = color("dtmf");
        g.fillText("⌗" + label, x(at) + 2, top + height - 8);
      } else if (kind === "stop") {
        vline(at, 20, H, color("ink"), [2, 2]);
      }
    }
    for (const [at, heard] of data.bargeIns) {
      g.fillStyle = color("barge");
      g.fillText("barge-in (" + heard.toFixed(2) + " s heard)", x(at) + 4, top + 10);
    }
    for (const [at, doneAt, name, status] of data.tools) {
      const left = x(at), w = Math.max(x(doneAt) - left, 8);
      g.fillStyle = color("tool");
      g.fillRect(left, top + 22, w, 14);
      g.fillStyle = status === "ok" ? color("ink") : color("barge");
      g.fillText(name + (status === "ok" ? "" : " (" + status + ")"), left + w + 4, top + 29);
    }
  }

  function draw() {
    g.clearRect(0, 0, width, H);
    ruler();
    wave("caller");
    wave("agent");
    events();
    vline(state.position, 20, H, color("ink"));
    clock.textContent = state.position.toFixed(2) + " s / " + duration.toFixed(2) + " s";
  }

  // -- playback: the embedded mu-law, both tracks, through Web Audio ----------------------------------
  let audio = null, source = null, startedAt = 0;
  function ulawTable() {
    const table = new Float32Array(256);
    for (let i = 0; i < 256; i++) {
      const u = ~i & 0xff, exponent = (u >> 4) & 7, mantissa = u & 0x0f;
      const magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
      table[i] = (u & 0x80 ? -magnitude : magnitude) / 32768;
    }
    return table;
  }
  function buildAudio() {
    const context = new AudioContext();
    const buffer = context.createBuffer(2, Math.ceil(duration * data.rate) + 1, data.rate);
    const table = ulawTable();
    ["caller", "agent"].forEach((name, channel) => {
      const out = buffer.getChannelData(channel);
      for (const [start, payload] of data.audio[name]) {
        const ulaw = bytes(payload);
        for (let i = 0; i < ulaw.length && start + i < out.length; i++) out[start + i] = table[ulaw[i]];
      }
    });
    return { context, buffer };
  }
  function stop() {
    if (source) { source.onended = null; source.stop(); source = null; }
    state.playing = false;
    playButton.textContent = "▶ Play";
  }
  function play() {
    if (!data.audio) return;
    audio = audio || buildAudio();
    if (state.position >= duration - 0.01) state.position = 0;
    source = audio.context.createBufferSource();
    source.buffer = audio.buffer;
    source.connect(audio.context.destination);
    source.onended = stop;
    source.start(0, state.position);
    startedAt = audio.context.currentTime - state.position;
    state.playing = true;
    playButton.textContent = "❚❚ Pause";
    requestAnimationFrame(tick);
  }
  function tick() {
    if (!state.playing) return;
    state.position = Math.min(duration, audio.context.currentTime - startedAt);
    follow();
    draw();
    requestAnimationFrame(tick);
  }
  function seek(t) {
    const playing = state.playing;
    if (playing) stop();
    state.position = t;
    follow();
    draw();
    if (playing) play();
  }

  // -- the log follows the playhead; a click on either moves it -----------------------------------------
  const entries = Array.from(document.querySelectorAll("#log .entry"));
  let current = null;
  function follow() {
    let now = null;
    for (const entry of entries) if (parseFloat(entry.dataset.at) <= state.position + 1e-6) now = entry;
    if (now !== current) {
      if (current) current.classList.remove("now");
      if (now) now.classList.add("now");
      current = now;
    }
    const px = x(state.position);
    if (px < scroller.scrollLeft || px > scroller.scrollLeft + scroller.clientWidth) scroller.scrollLeft = px - 40;
  }
  entries.forEach(entry => entry.addEventListener("click", () => seek(parseFloat(entry.dataset.at))));
  canvas.addEventListener("click", e => seek(timeAt(e.offsetX)));
  canvas.addEventListener("mousemove", e => {  // the full words of a label the lane had to cut short
    const lane = e.offsetY < LANES.agent[0] ? "caller" : e.offsetY < LANES.events[0] ? "agent" : null;
    const t = timeAt(e.offsetX);
    const said = data.utterances.filter(u => u[1] === lane && u[0] <= t).pop();
    canvas.title = said ? said[0].toFixed(2) + " s  " + said[2] + (said[3] ? " [not heard: " + said[3] + "]" : "") : "";
  });
  playButton.addEventListener("click", () => (state.playing ? stop() : play()));
  if (!data.audio) playButton.disabled = true;
  function rezoom(factor) {
    const centre = timeAt(scroller.scrollLeft + scroller.clientWidth / 2);
    zoom = Math.min(64, Math.max(1, zoom * factor));
    layout();
    scroller.scrollLeft = x(centre) - scroller.clientWidth / 2;
  }
  document.getElementById("zoom-in").addEventListener("click", () => rezoom(2));
  document.getElementById("zoom-out").addEventListener("click", () => rezoom(0.5));
  window.addEventListener("resize", layout);
  layout();
  state.ready = true;
})();
"""
