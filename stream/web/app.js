// turncrop live page: the camera to the server over WebRTC, the annotated preview back, operator prompts
// and live statistics over the "control" data channel, and a gallery of this session's stills.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);

// Every URL is relative to the page; a token in the page's URL is carried along.
function withToken(url) {
  return token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url;
}

// What the page knows, readable from outside (automated tests, the console).
const state = window.turncrop = { session: null, stats: null, events: [], gallery: [], errors: [] };
let pc = null;
let channel = null;

function log(text, isError) {
  const line = document.createElement("div");
  line.textContent = new Date().toLocaleTimeString() + "  " + text;
  if (isError) line.className = "error";
  $("log").prepend(line);
}

function send(message) {
  if (channel && channel.readyState === "open") channel.send(JSON.stringify(message));
}

function waitForIce(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") resolve();
    });
  });
}

async function start() {
  $("start").disabled = true;
  try {
    const camera = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    $("local").srcObject = camera;
    pc = new RTCPeerConnection({ iceServers: [] });
    pc.addEventListener("connectionstatechange", () => { $("state").textContent = pc.connectionState; });
    pc.addEventListener("track", (event) => { $("preview").srcObject = event.streams[0] || new MediaStream([event.track]); });
    camera.getVideoTracks().forEach((track) => pc.addTrack(track, camera));
    channel = pc.createDataChannel("control");
    channel.addEventListener("message", (event) => onMessage(JSON.parse(event.data)));
    channel.addEventListener("open", () => { $("next").disabled = false; $("rekey").disabled = false; });
    await pc.setLocalDescription(await pc.createOffer());
    await waitForIce(pc);
    const response = await fetch(withToken("offer"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    state.session = answer.session;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    log("session " + answer.session);
  } catch (error) {
    state.errors.push(String(error));
    log("cannot start: " + error, true);
    $("start").disabled = false;
  }
}

function onMessage(message) {
  if (message.type === "stats") {
    state.stats = message;
    $("stats").textContent =
      `${message.fps_in} fps in, ${message.fps_out} fps out, ${message.frames_dropped} dropped, ` +
      `latency p95 ${message.latency_ms_p95} ms\n` +
      `keyframes ${message.keyframes_first + message.keyframes_encoded} (${message.encoder_errors} failed), ` +
      `products ${message.products}\n` +
      `frame ${message.frame_index}: ${message.product_id || "no product"}, mask ${message.mask_area} px`;
    return;
  }
  state.events.push(message);
  if (message.type === "error") {
    state.errors.push(message.message);
    log(message.message, true);
  } else if (message.type === "still_exported") {
    log(`${message.product_id}: ${message.status}`);
    refreshGallery();
  } else if (message.type !== "command_queued") {
    log(message.type + (message.product_id ? " " + message.product_id : "") + (message.reason ? " (" + message.reason + ")" : ""));
  }
}

async function refreshGallery() {
  if (!state.session) return;
  const response = await fetch(withToken(`sessions/${state.session}/gallery`));
  if (!response.ok) return;
  state.gallery = await response.json();
  const gallery = $("gallery");
  gallery.replaceChildren();
  for (const entry of state.gallery) {
    const card = document.createElement("div");
    card.className = "still";
    card.dataset.product = entry.product_id;
    if (entry.thumbnail_url) {
      const img = document.createElement("img");
      img.src = withToken(entry.thumbnail_url);
      img.alt = entry.product_id;
      card.append(img);
    }
    const title = document.createElement("div");
    title.textContent = entry.product_id + (entry.status === "ok" ? "" : " (" + entry.reason + ")");
    card.append(title);
    for (const [name, url] of Object.entries(entry.files)) {
      const link = document.createElement("a");
      link.href = withToken(url);
      link.download = name;
      link.textContent = name;
      card.append(link, document.createElement("br"));
    }
    if (entry.spin_url) {
      const spin = document.createElement("a");
      spin.href = withToken(entry.spin_url);
      spin.target = "_blank";
      spin.textContent = "360° spin";
      card.append(spin);
    }
    gallery.append(card);
  }
}

// Preview element coordinates -> source-frame pixels (the video keeps its aspect ratio inside the element).
function toFrame(event) {
  const video = $("preview");
  const rect = video.getBoundingClientRect();
  const vw = video.videoWidth, vh = video.videoHeight;
  if (!vw || !vh || !state.stats || !state.stats.frame_size) return null;
  const scale = Math.min(rect.width / vw, rect.height / vh);
  const left = rect.left + (rect.width - vw * scale) / 2, top = rect.top + (rect.height - vh * scale) / 2;
  const u = (event.clientX - left) / (vw * scale), v = (event.clientY - top) / (vh * scale);
  if (u < 0 || u > 1 || v < 0 || v > 1) return null;
  const [width, height] = state.stats.frame_size;
  return { x: Math.min(u * width, width - 1), y: Math.min(v * height, height - 1), clientX: event.clientX, clientY: event.clientY };
}

let pressed = null;
$("stage").addEventListener("mousedown", (event) => { pressed = toFrame(event); event.preventDefault(); });
$("stage").addEventListener("mousemove", (event) => {
  if (!pressed) return;
  const stage = $("stage").getBoundingClientRect(), drag = $("drag");
  drag.style.display = "block";
  drag.style.left = Math.min(pressed.clientX, event.clientX) - stage.left + "px";
  drag.style.top = Math.min(pressed.clientY, event.clientY) - stage.top + "px";
  drag.style.width = Math.abs(event.clientX - pressed.clientX) + "px";
  drag.style.height = Math.abs(event.clientY - pressed.clientY) + "px";
});
window.addEventListener("mouseup", (event) => {
  $("drag").style.display = "none";
  const start = pressed;
  pressed = null;
  const end = toFrame(event);
  if (!start || !end) return;
  if (Math.hypot(end.clientX - start.clientX, end.clientY - start.clientY) < 5) {
    send({ type: "point", x: start.x, y: start.y, label: event.shiftKey ? 0 : 1 });
  } else {
    send({ type: "box", box: [Math.min(start.x, end.x), Math.min(start.y, end.y), Math.max(start.x, end.x), Math.max(start.y, end.y)] });
  }
});

$("start").addEventListener("click", start);
$("next").addEventListener("click", () => send({ type: "next_product" }));
$("rekey").addEventListener("click", () => send({ type: "rekey" }));
