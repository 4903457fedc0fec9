#!/usr/bin/env python3
"""WebRTC viewers of a Janus streaming mountpoint, on aiortc: what the Janus test plays with.

Each of --peers viewers speaks Janus's HTTP API as a browser's janus.js would: create a
session, attach janus.plugin.streaming, `watch` the mountpoint (Janus answers with an event
holding its JSEP offer, read by long-polling the session), answer with `start`, and then
decodes the video with aiortc's decoder (PyAV's FFmpeg h264) for --seconds after its first
frame. It prints one JSON line per viewer on stdout, then a summary line:

  {"peer": 0, "frames": N, "spanned": S, "ratio": R, "width": W, "height": H,
   "first_frame_ms": T, "error": null}
  {"peers": P, "ok": K, "min_ratio": R, "frames": N}

`spanned` is how many frames the stream carried from the viewer's first decoded frame to its
last, from their RTP timestamps and --fps (surv's forward stamps frame i at i * 90000/fps);
`ratio` = frames / spanned, the share of the stream this viewer decoded. Every wait is bounded
by --timeout; the exit status is 0 when every viewer decoded at least --min-ratio of its span
and --min-frames frames, 1 otherwise (the JSON says what happened).

ICE runs on the host's interface addresses: Janus (libnice) gathers no loopback candidate, so
a viewer on Janus's own host reaches it at its LAN address (the datagrams stay on the host).
Run with .venv/bin/python (scripts/setup.sh installs aiortc there).
"""

import argparse
import asyncio
import json
import random
import sys
import time

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

# Janus's answers are small; an event with an SDP is a few KiB.
MAX_RESPONSE_BYTES = 1 << 20


async def http(method, host, port, path, body=None, timeout=10.0):
    """One HTTP/1.0 request (Janus closes the connection after the answer): (status, JSON)."""

    async def exchange():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            data = json.dumps(body).encode() if body is not None else b""
            head = (
                f"{method} {path} HTTP/1.0\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            )
            writer.write(head.encode() + data)
            await writer.drain()
            raw = await reader.read(MAX_RESPONSE_BYTES)
            while len(raw) < MAX_RESPONSE_BYTES:
                more = await reader.read(MAX_RESPONSE_BYTES - len(raw))
                if not more:
                    break
                raw += more
        finally:
            writer.close()
        head, _, payload = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(payload) if payload.strip() else None

    return await asyncio.wait_for(exchange(), timeout)


def transaction():
    return "%016x" % random.getrandbits(64)


class Viewer:
    def __init__(self, index, args):
        self.index = index
        self.args = args
        self.out = {
            "peer": index,
            "frames": 0,
            "spanned": 0,
            "ratio": 0.0,
            "width": None,
            "height": None,
            "first_frame_ms": None,
            "error": None,
        }
        self.session = None
        self.handle = None
        self.offers = asyncio.Queue()
        self.pc = RTCPeerConnection()

    async def api(self, path, body):
        a = self.args
        body = dict(body, transaction=transaction())
        status, reply = await http("POST", a.host, a.port, path, body, a.timeout)
        if status != 200 or not reply or reply.get("janus") not in ("success", "ack"):
            raise RuntimeError(f"janus answered {status} {reply} to {body.get('janus')}")
        return reply

    async def poll(self):
        """Long-polls the session's events: the offer, trickled candidates. Until cancelled."""
        a = self.args
        path = f"/janus/{self.session}?maxev=10&rid={int(time.time() * 1000)}"
        while True:
            # Janus answers a long poll within 30 s (a keepalive) when it has no event.
            status, events = await http("GET", a.host, a.port, path, None, 35.0)
            if status != 200:
                raise RuntimeError(f"long poll answered {status}")
            if isinstance(events, dict):
                events = [events]
            for e in events or []:
                if e.get("janus") == "event" and e.get("jsep"):
                    self.offers.put_nowait(e)
                elif e.get("janus") == "event" and "error" in e.get("plugindata", {}).get(
                    "data", {}
                ):
                    self.offers.put_nowait(e)
                elif e.get("janus") == "trickle":
                    c = e.get("candidate") or {}
                    if c.get("candidate"):
                        cand = candidate_from_sdp(c["candidate"].split(":", 1)[1])
                        cand.sdpMid = c.get("sdpMid")
                        cand.sdpMLineIndex = c.get("sdpMLineIndex")
                        await self.pc.addIceCandidate(cand)
                elif e.get("janus") in ("hangup", "detached"):
                    raise RuntimeError(f"janus ended the viewer: {e}")

    async def run(self, deadline):
        a = self.args
        started = time.monotonic()
        poller = None
        try:
            self.session = (await self.api("/janus", {"janus": "create"}))["data"]["id"]
            poller = asyncio.ensure_future(self.poll())
            attach = {"janus": "attach", "plugin": "janus.plugin.streaming"}
            self.handle = (await self.api(f"/janus/{self.session}", attach))["data"]["id"]
            at = f"/janus/{self.session}/{self.handle}"
            watch = {"request": "watch", "id": a.mountpoint}
            await self.api(at, {"janus": "message", "body": watch})
            got = asyncio.ensure_future(self.offers.get())
            done, _ = await asyncio.wait(
                {got, poller}, timeout=max(deadline - time.monotonic(), 0.1),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if got not in done:
                got.cancel()
                if poller in done:
                    poller.result()
                raise RuntimeError("no offer from janus")
            event = got.result()
            if "jsep" not in event:
                raise RuntimeError(f"watch refused: {event['plugindata']['data']}")
            tracks = asyncio.Queue()
            self.pc.on("track", lambda track: tracks.put_nowait(track))
            await self.pc.setRemoteDescription(
                RTCSessionDescription(sdp=event["jsep"]["sdp"], type=event["jsep"]["type"])
            )
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            answer = {"type": "answer", "sdp": self.pc.localDescription.sdp}
            await self.api(at, {"janus": "message", "body": {"request": "start"}, "jsep": answer})
            # aiortc put all of its candidates in the answer.
            await self.api(at, {"janus": "trickle", "candidate": {"completed": True}})
            track = await asyncio.wait_for(tracks.get(), max(deadline - time.monotonic(), 0.1))
            await self.decode(track, started, deadline)
        except Exception as e:  # noqa: BLE001 - reported in the JSON
            self.out["error"] = self.out["error"] or f"{type(e).__name__}: {e}"
        finally:
            if poller:
                poller.cancel()
            await self.pc.close()
            if self.session:
                try:
                    await http("POST", a.host, a.port, f"/janus/{self.session}",
                               {"janus": "destroy", "transaction": transaction()}, 2.0)
                except Exception:  # noqa: BLE001 - Janus times the session out anyway
                    pass

    async def decode(self, track, started, deadline):
        a = self.args
        first_pts = last_pts = None
        until = None
        while True:
            now = time.monotonic()
            end = deadline if until is None else min(until, deadline)
            if now >= end:
                break
            try:
                frame = await asyncio.wait_for(track.recv(), end - now)
            except asyncio.TimeoutError:
                break
            if first_pts is None:
                first_pts = frame.pts
                self.out["first_frame_ms"] = round((time.monotonic() - started) * 1000.0, 1)
                until = time.monotonic() + a.seconds
            last_pts = frame.pts
            self.out["frames"] += 1
            self.out["width"], self.out["height"] = frame.width, frame.height
        if first_pts is None:
            self.out["error"] = "no frame decoded"
            return
        if until is not None and time.monotonic() < until - 0.05:
            self.out["error"] = f"the timeout ended the viewer {until - time.monotonic():.1f} s early"
        step = 90000 / a.fps
        spanned = round(((last_pts - first_pts) % (1 << 32)) / step) + 1
        self.out["spanned"] = spanned
        self.out["ratio"] = round(self.out["frames"] / spanned, 4)


async def main_async(args):
    deadline = time.monotonic() + args.timeout
    viewers = [Viewer(i, args) for i in range(args.peers)]
    # Joins spread over --ramp seconds, as viewers arrive.
    async def start(v):
        await asyncio.sleep(args.ramp * v.index / max(args.peers, 1))
        await v.run(deadline)

    await asyncio.wait_for(
        asyncio.gather(*(start(v) for v in viewers)), args.timeout + 5
    )
    return viewers


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="Janus's HTTP API, http://HOST:PORT/janus")
    p.add_argument("--mountpoint", type=int, default=1, help="the streaming mountpoint id")
    p.add_argument("--peers", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0, help="decoding, after the first frame")
    p.add_argument("--fps", type=float, default=30.0, help="the stream's frame rate")
    p.add_argument("--ramp", type=float, default=0.0, help="seconds over which viewers join")
    p.add_argument("--min-ratio", type=float, default=0.99)
    p.add_argument("--min-frames", type=int, default=10)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds for everything")
    args = p.parse_args()
    rest = args.url.split("://", 1)[-1].split("/", 1)[0]
    args.host, _, port = rest.rpartition(":")
    args.port = int(port)
    viewers = []
    error = None
    try:
        viewers = asyncio.run(main_async(args))
    except Exception as e:  # noqa: BLE001 - the summary says why
        error = f"{type(e).__name__}: {e}"
    ok = 0
    for v in viewers:
        print(json.dumps(v.out), flush=True)
        if (
            v.out["error"] is None
            and v.out["ratio"] >= args.min_ratio
            and v.out["frames"] >= args.min_frames
        ):
            ok += 1
    summary = {
        "peers": args.peers,
        "ok": ok,
        "min_ratio": min((v.out["ratio"] for v in viewers), default=0.0),
        "frames": sum(v.out["frames"] for v in viewers),
        "error": error,
    }
    print(json.dumps(summary), flush=True)
    sys.exit(0 if ok == args.peers and error is None else 1)


if __name__ == "__main__":
    main()
