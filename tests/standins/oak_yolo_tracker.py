#!/usr/bin/python3
"""A stand-in for an OAK PoE camera that detects on the device: the DepthAI Script node of the
YOLO people tracker (issue 22), a TCP server that sends each MJPEG frame after a header holding
the tracked objects. The header is built by the script's own expression, byte for byte:

    header = f"ABCDE " + str(ts.total_seconds()).ljust(18) + str(len(data)).ljust(8) \
        + str(counter).ljust(16) + str(data_to_send).ljust(208)
    conn.send(bytes(header, encoding='ascii'))
    conn.send(data)

`ljust` pads and never cuts: three tracked people make the header longer than 256 bytes, as on
the device. With --mobilenet it is the mobilenet-ssd tracker's instead: `counter` is the list
of line crossings and each entry is `[text, cx, cy]` only.

What it sends comes from a scene file (JSON): a list of scenes, each shown for `frames` frames,
each a JPEG file and its tracklets as the device's tracker gives them:

    [{"frames": 20, "jpeg": "a.jpg",
      "tracklets": [{"id": 1, "label": 0, "status": "TRACKED", "roi": [x1, y1, x2, y2]}]},
     {"frames": 20, "jpeg": "b.jpg", "tracklets": []}]

`roi` is normalised (0-1) as `t.roi` is; it is denormalised to the network's 640x640 preview
(300x300 with --mobilenet) as `roi.denormalize(...)` does. `label` indexes `labelMap`
(`["person"]`); one it cannot look up is sent as the int, as the script's `except` does.
Tracklets LOST or REMOVED are not sent.

It listens on 127.0.0.1 (--port 0: the system's pick), prints `LISTENING PORT` and flushes, takes
one connection (as the Script node does), sends every frame of every scene at --fps, closes,
prints `SENT FRAMES LONGEST_HEADER` (frames sent, the longest header's bytes) and exits 0. It exits 1 if nobody connects within --accept-timeout seconds or the peer goes away.
With --connect HOST:PORT it connects there instead (to surv's `tcp-listen://`), the same bytes.
Only the Python standard library.
"""

import argparse
import json
import socket
import sys
import time
from datetime import timedelta

labelMap = ["person",]


def data_for(tracklets, preview, mobilenet, obj_counter, fps):
    """What the script appends to `data_to_send` for one frame's tracklets."""
    data_to_send = []
    for t in tracklets:
        x1n, y1n, x2n, y2n = t["roi"]
        # roi = t.roi.denormalize(w, h); x1 = int(roi.topLeft().x) ...
        x1, y1 = int(x1n * preview), int(y1n * preview)
        x2, y2 = int(x2n * preview), int(y2n * preview)
        try:
            label = labelMap[t["label"]]
        except Exception:
            label = t["label"]
        if t.get("status", "TRACKED") in ("LOST", "REMOVED"):
            continue
        text = "ID {}".format(t["id"])
        centroid = (int((x2 - x1) / 2 + x1), int((y2 - y1) / 2 + y1))
        if mobilenet:
            data_to_send.append([text, centroid[0], centroid[1]])
        else:
            coordinates = [x1, y1, x2, y2]
            data_to_send.append([text, centroid[0], centroid[1], label, coordinates, obj_counter, fps])
    return data_to_send


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=3005)
    ap.add_argument("--scenes", required=True, help="the scene file (JSON)")
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--mobilenet", action="store_true")
    ap.add_argument("--accept-timeout", type=float, default=10.0)
    ap.add_argument("--connect", help="HOST:PORT to connect to instead of listening")
    args = ap.parse_args()

    with open(args.scenes) as f:
        scenes = json.load(f)
    for scene in scenes:
        with open(scene["jpeg"], "rb") as j:
            scene["data"] = j.read()
    preview = 300 if args.mobilenet else 640

    if args.connect:
        host, port = args.connect.rsplit(":", 1)
        server = None
        conn = socket.create_connection((host, int(port)), timeout=args.accept_timeout)
        print("CONNECTED %d" % conn.getsockname()[1], flush=True)
    else:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", args.port))
        server.listen()
        print("LISTENING %d" % server.getsockname()[1], flush=True)
        server.settimeout(args.accept_timeout)
        try:
            conn, client = server.accept()
        except socket.timeout:
            print("nobody connected", file=sys.stderr)
            return 1
    conn.settimeout(10.0)

    boot = time.monotonic()
    start_time = boot
    counter = 0
    fps = 0
    line_counter = [0, 0, 0, 0]  # left, right, up, down crossings
    next_at = time.monotonic()
    sent, longest = 0, 0
    try:
        for scene in scenes:
            for _ in range(int(scene["frames"])):
                next_at += 1.0 / args.fps
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                # The frame counter for the fps figure, reset every second.
                counter += 1
                current_time = time.monotonic()
                if (current_time - start_time) > 1:
                    fps = counter / (current_time - start_time)
                    counter = 0
                    start_time = current_time
                ts = timedelta(seconds=current_time - boot)
                data = scene["data"]
                obj_counter = [0, 0, 0, 0]
                data_to_send = data_for(scene["tracklets"], preview, args.mobilenet, obj_counter, fps)
                sent_counter = line_counter if args.mobilenet else counter
                # now to send data we need to encode it (whole header is 256 characters long)
                header = f"ABCDE " + str(ts.total_seconds()).ljust(18) + str(len(data)).ljust(8) + str(sent_counter).ljust(16) + str(data_to_send).ljust(208)
                conn.send(bytes(header, encoding='ascii'))
                # The script sends `data` with one `send`, which a big JPEG on a busy link may
                # cut short; the stand-in sends it all, so that the bytes on the wire are the
                # script's when the device's send is whole.
                conn.sendall(data)
                sent += 1
                longest = max(longest, len(header))
    except OSError as e:
        print("the peer went away: %s" % e, file=sys.stderr)
        return 1
    conn.close()
    if server is not None:
        server.close()
    print("SENT %d %d" % (sent, longest), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
