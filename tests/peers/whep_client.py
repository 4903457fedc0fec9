#!/usr/bin/env python3
"""A WHEP client on aiortc, an independent WebRTC stack: what the WebRTC tests play surv with.

It POSTs a recvonly H.264 offer to URL, decodes FRAMES frames with aiortc's decoder (PyAV's
FFmpeg h264), then DELETEs the session, and prints one JSON line on stdout:

  {"status": 201, "location": "...", "frames": N, "width": W, "height": H,
   "first_frame_ms": T, "elapsed_ms": E, "delete_status": 200, "error": null}

first_frame_ms is from the moment the POST is sent to the first decoded frame. Every wait is
bounded by --timeout; the exit status is 0 when FRAMES frames were decoded, 1 otherwise (the
JSON says what happened). ICE is kept on loopback: the only host candidate gathered is
127.0.0.1 (aioice leaves loopback out by itself), so no datagram leaves this machine.

Needs aiortc (scripts/setup.sh installs it into .venv). Run with .venv/bin/python.
"""

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.request

import aioice.ice
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription

# Loopback only (see the docstring): aioice asks this for the addresses to gather.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


def http(method, url, body=None, token=None, content_type=None, timeout=10.0):
    """One request; (status, headers, body) whatever the status."""
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def play(args, out):
    pc = RTCPeerConnection()
    try:
        transceiver = pc.addTransceiver("video", direction="recvonly")
        h264 = [
            c
            for c in RTCRtpReceiver.getCapabilities("video").codecs
            if c.mimeType in ("video/H264", "video/rtx")
        ]
        transceiver.setCodecPreferences(h264)
        tracks = asyncio.Queue()
        pc.on("track", lambda track: tracks.put_nowait(track))
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        if args.hide_candidates:
            # As a browser that hides its addresses behind mDNS names the server cannot
            # resolve (or a player behind a NAT of its own): the server learns where we are
            # only from our connectivity checks.
            offer = "".join(
                line
                for line in offer.splitlines(keepends=True)
                if not line.startswith(("a=candidate:", "a=end-of-candidates"))
            )
        started = time.monotonic()
        deadline = started + args.timeout
        status, headers, body = await asyncio.to_thread(
            http,
            "POST",
            args.url,
            offer.encode(),
            args.token,
            "application/sdp",
            args.timeout,
        )
        out["status"] = status
        location = headers.get("Location") or headers.get("location")
        out["location"] = location
        if status != 201:
            out["error"] = body.decode(errors="replace").strip()
            return
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body.decode(), type="answer"))
        track = await asyncio.wait_for(tracks.get(), max(deadline - time.monotonic(), 0.1))
        while out["frames"] < args.frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                out["error"] = f"only {out['frames']} of {args.frames} frames in {args.timeout} s"
                break
            frame = await asyncio.wait_for(track.recv(), remaining)
            if out["frames"] == 0:
                out["first_frame_ms"] = round((time.monotonic() - started) * 1000.0, 1)
            out["frames"] += 1
            out["width"], out["height"] = frame.width, frame.height
        out["elapsed_ms"] = round((time.monotonic() - started) * 1000.0, 1)
        if location and not args.keep:
            base = args.url.split("/cam/")[0]
            status, _, _ = await asyncio.to_thread(
                http, "DELETE", base + location, None, args.token, None, args.timeout
            )
            out["delete_status"] = status
        elif args.keep:
            # Stay connected (the test ends the session its own way), bounded by the timeout.
            await asyncio.sleep(max(min(args.hold, deadline - time.monotonic()), 0))
    except asyncio.TimeoutError:
        out["error"] = f"timed out after {out['frames']} frames"
    finally:
        await pc.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url", help="the WHEP endpoint, http://HOST:PORT/cam/NAME/whep")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds for everything")
    p.add_argument("--token", help="sent as Authorization: Bearer TOKEN")
    p.add_argument("--keep", action="store_true", help="do not DELETE the session")
    p.add_argument("--hold", type=float, default=0.0, help="with --keep: seconds to stay")
    p.add_argument(
        "--hide-candidates",
        action="store_true",
        help="send the offer without our ICE candidates (a browser's mDNS names, a NAT)",
    )
    args = p.parse_args()
    out = {
        "status": None,
        "location": None,
        "frames": 0,
        "width": None,
        "height": None,
        "first_frame_ms": None,
        "elapsed_ms": None,
        "delete_status": None,
        "error": None,
    }
    try:
        asyncio.run(asyncio.wait_for(play(args, out), args.timeout + 5))
    except Exception as e:  # noqa: BLE001 - the test reads the reason from the JSON
        out["error"] = out["error"] or f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
    sys.exit(0 if out["frames"] >= args.frames else 1)


if __name__ == "__main__":
    main()
