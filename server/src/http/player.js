// surv's live player, shared by the camera page and the grid: WebRTC (WHEP) first, because it
// carries H.264 at a tenth of MJPEG's bits with congestion feedback; MJPEG when WebRTC cannot
// play (WebRTC off on the server, UDP blocked on the way, no picture in time). What it plays and
// how well is kept in the object `survPlay` returns (the page shows it, tests read it).
"use strict";

// Without a picture this long after the offer, WebRTC is given up for MJPEG.
const SURV_WEBRTC_START_MS = 5000;
// A WebRTC connection that broke is tried again after this long (then MJPEG, if it fails).
const SURV_RETRY_MS = 2000;

function survAuth(token) {
  return token ? { Authorization: "Bearer " + token } : {};
}

// Plays the camera whose routes start at `base` (e.g. "/cam/main/") into the element `box`.
// `fallback` is "mjpeg" (a stream) or "snapshot" (a picture a second: the grid's tiles, since a
// browser opens at most six connections to one server); with `webrtcToo` false it plays that
// without trying WebRTC. Returns the live state:
// { mode: "starting" | "webrtc" | "mjpeg" | "snapshot", reason (why not WebRTC), codec,
//   frames (drawn; WebRTC: framesDecoded, as of statsAt, its getStats time in ms), kbps,
//   latencyMs (WebRTC: jitter buffer + decode + half the round trip; null when unknown),
//   freezes (WebRTC: the receiver's freezeCount), transport (WebRTC: "udp", or "tcp" where UDP
//   is blocked), width, height }.
function survPlay(box, base, token, fallback, webrtcToo = true) {
  const state = { mode: "starting", reason: null, codec: null, frames: 0, statsAt: null,
                  kbps: null, latencyMs: null, freezes: 0, transport: null, width: 0, height: 0 };
  const video = document.createElement("video");
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  const img = document.createElement("img");
  img.alt = "live picture";
  video.hidden = img.hidden = true;
  box.append(video, img);
  const withToken = (q) => token ? q + "&token=" + encodeURIComponent(token) : q;
  let stopStats = () => {};

  function showMjpeg(reason) {
    stopStats();
    video.hidden = true;
    video.srcObject = null;
    img.hidden = false;
    state.mode = fallback;
    state.reason = reason;
    state.codec = "image/jpeg";
    state.latencyMs = null;
    state.transport = null;
    if (fallback === "snapshot") {
      const next = () => setTimeout(() => {
        img.src = base + "snapshot.jpg" + withToken("?t=" + Date.now());
      }, 1000);
      img.onload = () => { state.frames += 1; next(); };
      img.onerror = next;
      img.src = base + "snapshot.jpg" + withToken("?t=" + Date.now());
      return;
    }
    mjpeg();
  }

  // MJPEG read by fetch rather than an <img>'s own stream, so that the page knows the bytes
  // and frames it gets. Parts are cut at the boundary the server writes after each JPEG
  // (`advance_headers=1`: the next part's head follows the picture at once).
  async function mjpeg() {
    const tail = new TextEncoder().encode("\r\n--surv-mjpeg-part\r\n");
    const find = (buf, len, from) => {
      outer: for (let i = from; i + tail.length <= len; i++) {
        for (let j = 0; j < tail.length; j++) if (buf[i + j] !== tail[j]) continue outer;
        return i;
      }
      return -1;
    };
    let bytes = 0, last = { t: performance.now(), bytes: 0 }, shown = null, drawing = false;
    const timer = setInterval(() => {
      const now = performance.now();
      state.kbps = (bytes - last.bytes) * 8 / (now - last.t);
      last = { t: now, bytes };
    }, 1000);
    stopStats = () => clearInterval(timer);
    const draw = (jpeg) => {
      if (drawing) { shown = jpeg; return; } // the newest waits; older ones are dropped
      drawing = true;
      const url = URL.createObjectURL(new Blob([jpeg], { type: "image/jpeg" }));
      img.onload = img.onerror = () => {
        URL.revokeObjectURL(url);
        state.frames += 1;
        state.width = img.naturalWidth;
        state.height = img.naturalHeight;
        drawing = false;
        if (shown) { const j = shown; shown = null; draw(j); }
      };
      img.src = url;
    };
    try {
      const r = await fetch(base + "stream.mjpg" + withToken("?advance_headers=1&t=" + Date.now()),
                            { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const reader = r.body.getReader();
      let buf = new Uint8Array(1 << 20), len = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) throw new Error("the stream ended");
        bytes += value.length;
        if (len + value.length > buf.length) {
          if (len + value.length > 64 << 20) throw new Error("a part over 64 MiB");
          const bigger = new Uint8Array(2 * (len + value.length));
          bigger.set(buf.subarray(0, len));
          buf = bigger;
        }
        buf.set(value, len);
        const from = Math.max(0, len - tail.length);
        len += value.length;
        for (let at = find(buf, len, from); at >= 0; at = find(buf, len, 0)) {
          // [head of this part]\r\n\r\n[JPEG] then the tail: the JPEG starts after the head.
          let start = 0;
          for (let i = 0; i + 3 < at; i++) {
            if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) {
              start = i + 4;
              break;
            }
          }
          if (start > 0 && at > start) draw(buf.slice(start, at));
          buf.copyWithin(0, at + 2, len); // keep "--surv-mjpeg-part..." as the next head
          len -= at + 2;
        }
      }
    } catch (e) {
      stopStats();
      state.reason = "MJPEG: " + e.message + "; trying again";
      setTimeout(start, SURV_RETRY_MS);
    }
  }

  async function webrtc() {
    const pc = new RTCPeerConnection();
    let location = null;
    const end = () => {
      pc.close();
      if (location) fetch(new URL(location, document.baseURI),
                              { method: "DELETE", headers: survAuth(token), keepalive: true });
      location = null;
    };
    try {
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.ontrack = (e) => { video.srcObject = e.streams[0] || new MediaStream([e.track]); };
      await pc.setLocalDescription(await pc.createOffer());
      await new Promise((done) => {
        if (pc.iceGatheringState === "complete") return done();
        pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
        setTimeout(done, 1000); // the server is ICE-lite: host candidates are enough
      });
      const r = await fetch(base + "whep", {
        method: "POST", body: pc.localDescription.sdp,
        headers: { "Content-Type": "application/sdp", ...survAuth(token) } });
      const sdp = await r.text();
      if (r.status !== 201) throw new Error("the server answered " + r.status + ": " + sdp.trim());
      location = r.headers.get("Location");
      await pc.setRemoteDescription({ type: "answer", sdp });
      await new Promise((ok, fail) => {
        const t = setTimeout(() => fail(new Error("no picture within " +
          SURV_WEBRTC_START_MS / 1000 + " s (UDP blocked on the way?)")), SURV_WEBRTC_START_MS);
        pc.onconnectionstatechange = () => {
          if (pc.connectionState === "failed") { clearTimeout(t); fail(new Error("ICE failed")); }
        };
        video.requestVideoFrameCallback(() => { clearTimeout(t); ok(); });
      });
    } catch (e) {
      end();
      throw e;
    }
    video.hidden = false;
    img.hidden = true;
    state.mode = "webrtc";
    state.reason = null;
    let last = null;
    const timer = setInterval(async () => {
      const stats = await pc.getStats();
      let rtt = null;
      stats.forEach((s) => {
        if (s.type !== "candidate-pair" || !s.nominated) return;
        if (s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime;
        const local = stats.get(s.localCandidateId);
        if (local && local.protocol) state.transport = local.protocol;
      });
      stats.forEach((s) => {
        if (s.type !== "inbound-rtp" || s.kind !== "video") return;
        const now = { t: s.timestamp, bytes: s.bytesReceived || 0, frames: s.framesDecoded || 0,
                      buffer: s.jitterBufferDelay || 0, emitted: s.jitterBufferEmittedCount || 0,
                      decode: s.totalDecodeTime || 0 };
        state.frames = now.frames;
        state.statsAt = now.t;
        state.freezes = s.freezeCount || 0;
        state.width = s.frameWidth || 0;
        state.height = s.frameHeight || 0;
        const codec = stats.get(s.codecId);
        if (codec) state.codec = codec.mimeType;
        if (last && now.t > last.t) {
          state.kbps = (now.bytes - last.bytes) * 8 / (now.t - last.t);
          const emitted = now.emitted - last.emitted, decoded = now.frames - last.frames;
          if (emitted > 0 && decoded > 0) {
            state.latencyMs = 1000 * ((now.buffer - last.buffer) / emitted +
              (now.decode - last.decode) / decoded + (rtt || 0) / 2);
          }
        }
        last = now;
      });
    }, 1000);
    stopStats = () => { clearInterval(timer); end(); };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState !== "failed" && pc.connectionState !== "closed") return;
      stopStats();
      state.mode = "starting";
      state.reason = "WebRTC connection " + pc.connectionState + "; starting again";
      setTimeout(start, SURV_RETRY_MS);
    };
  }

  async function start() {
    if (!webrtcToo) return showMjpeg("MJPEG asked for");
    state.mode = "starting";
    try {
      await webrtc();
    } catch (e) {
      showMjpeg("WebRTC: " + e.message);
    }
  }
  addEventListener("pagehide", () => stopStats());
  start();
  return state;
}
