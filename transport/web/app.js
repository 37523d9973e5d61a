// The chains voice page: microphone -> websocket -> chain -> reply audio and text.
//
// Protocol (see transport/protocol.py): we send {"type": "start", "sample_rate": R}
// then binary PCM16LE mono frames at R Hz (resampled by worklet.js); the server
// answers "ready" (with the rate of its reply audio), "transcript" (interim ones with
// final: false while you speak), "text",
// binary reply audio, "metrics" per turn, "event", "error" and "done".
// Talking over the reply interrupts it: locally (mic level while audio plays) and
// when the server's VAD says speech started.
//
// Query parameters: rate (mic rate sent, default 16000), out_rate (reply audio rate
// asked for, default 24000), chain, token, autostart=1, barge (RMS threshold,
// default 0.06; 0 disables the local barge-in detector).

"use strict";

const params = new URLSearchParams(location.search);
const RATE = Number(params.get("rate")) || 16000;
const OUT_RATE = Number(params.get("out_rate")) || 24000; // reply audio: the browser plays any rate
const BARGE = params.has("barge") ? Number(params.get("barge")) : 0.06;
const BARGE_FRAMES = 8; // 160 ms of loud mic while the reply plays

const $ = (id) => document.getElementById(id);

// State the page shows, also readable by tests (window.chains).
const state = {
  status: "idle",
  session: null,
  outRate: RATE,
  transcripts: [],
  interim: [],
  replies: [],
  metrics: [],
  errors: [],
  framesSent: 0,
  audioFrames: 0,
  interrupts: 0,
  truncated: [], // the `truncated` events: what was heard of each interrupted reply
};
window.chains = state;

let ws = null;
let ctx = null;
let micStream = null;
let captureNode = null;
let playhead = 0;
let sources = [];
let loudFrames = 0;
let lastLoud = 0; // performance.now() of the last loud mic frame
let turnFirstAudio = true;
let currentReply = null;
let interimLine = null; // the <p> showing the interim transcript of the turn being spoken

function setStatus(s) {
  state.status = s;
  $("status").textContent = s;
}

function log(msg) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()}  ${msg}`;
  $("log").prepend(li);
  while ($("log").children.length > 50) $("log").lastChild.remove();
}

// --- playback ------------------------------------------------------------------------
function playing() {
  return ctx !== null && playhead > ctx.currentTime;
}

function play(buf) {
  const pcm = new Int16Array(buf);
  if (pcm.length === 0 || ctx === null) return;
  const f32 = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) f32[i] = pcm[i] / 0x8000;
  const ab = ctx.createBuffer(1, f32.length, state.outRate);
  ab.copyToChannel(f32, 0);
  const src = ctx.createBufferSource();
  src.buffer = ab;
  src.connect(ctx.destination);
  const t = Math.max(ctx.currentTime + 0.03, playhead);
  src.start(t);
  playhead = t + ab.duration;
  sources.push(src);
  src.onended = () => {
    sources = sources.filter((s) => s !== src);
  };
}

function flushPlayback() {
  for (const s of sources) {
    try {
      s.stop();
    } catch (e) {
      /* already stopped */
    }
  }
  sources = [];
  playhead = 0;
}

function interrupt(reason) {
  state.interrupts += 1;
  flushPlayback();
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "interrupt", reason }));
  log(`interrupt (${reason})`);
}

// --- server messages -------------------------------------------------------------------
function onText(msg) {
  switch (msg.type) {
    case "ready":
      state.session = msg.session;
      state.outRate = msg.sample_rate;
      setStatus(`listening (session ${msg.session}, chain ${msg.chain})`);
      startMic().catch((e) => fail(`microphone: ${e.message || e}`));
      break;
    case "transcript": {
      // interim transcripts (final: false) replace each other in one grey line,
      // which the final transcript of the turn then takes over
      if (interimLine === null) {
        interimLine = document.createElement("p");
        $("transcript").append(interimLine);
      }
      interimLine.textContent = msg.text;
      if (!msg.final) {
        state.interim.push(msg.text);
        interimLine.className = "interim";
        break;
      }
      interimLine.className = "";
      interimLine = null;
      state.transcripts.push(msg.text);
      currentReply = null;
      turnFirstAudio = true;
      break;
    }
    case "text": {
      if (currentReply === null) {
        currentReply = document.createElement("p");
        $("reply").append(currentReply);
        state.replies.push("");
      }
      currentReply.textContent += msg.text;
      state.replies[state.replies.length - 1] += msg.text;
      if (msg.final) currentReply = null;
      break;
    }
    case "metrics":
      state.metrics.push(msg);
      addMetrics(msg);
      break;
    case "event":
      if (msg.event === "truncated") {
        showHeard(msg.data || {});
        break;
      }
      if ((msg.event === "speech_started" && playing()) || msg.event === "interrupt") {
        if (msg.event === "interrupt") flushPlayback();
        else interrupt("speech");
      }
      break;
    case "error":
      state.errors.push(msg);
      log(`error ${msg.code}${msg.node ? " in " + msg.node : ""}: ${msg.message}`);
      break;
    case "done":
      setStatus("done");
      break;
    default:
      log(`${msg.type}: ${JSON.stringify(msg)}`);
  }
}

// An interrupted reply: the words you heard stay, the rest is struck through (the
// server tells the chain the same, so its next answer builds on what you heard).
function showHeard(data) {
  state.truncated.push(data);
  const replies = $("reply").querySelectorAll("p");
  const p = replies[replies.length - 1];
  if (!p) return;
  const said = p.textContent;
  const heard = data.heard || "";
  const cut = said.startsWith(heard) ? heard.length : 0;
  const kept = document.createElement("span");
  kept.className = "heard";
  kept.textContent = said.slice(0, cut);
  const lost = document.createElement("span");
  lost.className = "unheard";
  lost.textContent = said.slice(cut);
  p.replaceChildren(kept, lost);
  p.title = `heard ${Math.round(data.played_ms || 0)} of ${Math.round(data.sent_ms || 0)} ms sent`;
  currentReply = null;
}

function fmt(v) {
  return v === undefined || v === null ? "–" : `${Math.round(v)}`;
}

// One row per turn: the latency breakdown in ms after the end of your speech (as the
// server's VAD dated it), then speculative turns confirmed/abandoned, interim
// transcripts, and whether the reply was interrupted.
function addMetrics(m) {
  const tr = document.createElement("tr");
  const b = m.breakdown || {};
  const cells = [m.turn, fmt(b.end_of_turn), fmt(b.transcript), fmt(b.first_token), fmt(b.first_audio)];
  cells.push(`${m.speculative_hits || 0} / ${m.speculative_misses || 0}`, m.interim_transcripts || 0);
  cells.push(m.interrupted ? "yes" : "");
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c;
    tr.append(td);
  }
  $("metrics").append(tr);
}

function onAudio(buf) {
  state.audioFrames += 1;
  if (turnFirstAudio && lastLoud > 0) {
    turnFirstAudio = false;
    $("client-latency").textContent = `${Math.round(performance.now() - lastLoud)} ms from your last word to the first reply audio`;
  }
  play(buf);
}

// --- microphone ----------------------------------------------------------------------
async function startMic() {
  micStream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const src = ctx.createMediaStreamSource(micStream);
  await ctx.audioWorklet.addModule("worklet.js");
  captureNode = new AudioWorkletNode(ctx, "pcm-capture", { processorOptions: { targetRate: RATE, frameMs: 20 } });
  captureNode.port.onmessage = (e) => {
    const { pcm, rms } = e.data;
    $("level").value = Math.min(1, rms * 5);
    if (rms > 0.02) lastLoud = performance.now();
    if (BARGE > 0 && playing() && rms > BARGE) {
      loudFrames += 1;
      if (loudFrames >= BARGE_FRAMES) {
        loudFrames = 0;
        interrupt("barge-in");
      }
    } else {
      loudFrames = 0;
    }
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(pcm);
      state.framesSent += 1;
    }
  };
  const mute = ctx.createGain();
  mute.gain.value = 0; // keep the worklet pulled by the graph without hearing ourselves
  src.connect(captureNode).connect(mute).connect(ctx.destination);
}

function fail(msg) {
  state.errors.push({ code: "page", message: msg });
  setStatus(`error: ${msg}`);
  log(msg);
}

async function start() {
  $("start").disabled = true;
  $("stop").disabled = false;
  ctx = new AudioContext();
  if (ctx.state === "suspended") await ctx.resume().catch(() => {});
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/`);
  ws.binaryType = "arraybuffer";
  setStatus("connecting");
  ws.onopen = () => {
    const start = { type: "start", sample_rate: RATE, output_sample_rate: OUT_RATE };
    if (params.get("chain")) start.chain = params.get("chain");
    if (params.get("token")) start.token = params.get("token");
    ws.send(JSON.stringify(start));
  };
  ws.onmessage = (e) => {
    if (typeof e.data === "string") onText(JSON.parse(e.data));
    else onAudio(e.data);
  };
  ws.onclose = (e) => {
    if (state.status !== "done" && !state.status.startsWith("error")) setStatus(`closed (${e.code} ${e.reason})`);
    stopMic();
    $("start").disabled = false;
    $("stop").disabled = true;
  };
  ws.onerror = () => log("websocket error");
}

function stopMic() {
  if (micStream) micStream.getTracks().forEach((t) => t.stop());
  micStream = null;
  if (captureNode) captureNode.disconnect();
  captureNode = null;
}

function stop() {
  stopMic();
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
  $("stop").disabled = true;
}

$("start").addEventListener("click", () => start().catch((e) => fail(e.message || String(e))));
$("stop").addEventListener("click", stop);
$("rate").textContent = `${RATE} Hz`;
if (params.get("autostart") === "1") start().catch((e) => fail(e.message || String(e)));
