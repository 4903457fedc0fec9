#!/usr/bin/python3
"""A stand-in RTSP camera for surv's tests: GStreamer's gst-rtsp-server (what many IP cameras and
NVR bridges run), serving a live test picture on two mounts:

  /h264   videotestsrc -> x264enc (Main profile, zerolatency, a key frame every --key-int frames)
          -> RTP/H.264
  /mjpeg  videotestsrc -> jpegenc -> RTP/JPEG (RFC 2435)
  /h265   videotestsrc -> x265enc -> RTP/H.265 (only when x265enc is installed; surv refuses it)

Both TCP-interleaved and UDP transports are offered, as a camera does. With --user/--password the
mounts need that login, by Basic or Digest (--auth). Listens on 127.0.0.1 only.

Once it listens it prints one line, `READY rtsp://127.0.0.1:PORT /h264 /mjpeg …` (the mounts it
serves), and flushes it (with --port 0 the port is the one the system chose), then serves until
killed.

Run with the system /usr/bin/python3, which has `gi` (Debian packages python3-gi,
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-{base,good,ugly}; see scripts/setup.sh).
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def picture(args):
    # pattern=smpte: colour bars a test can recognise (white-grey, yellow, cyan, ... left to
    # right); is-live paces it at the frame rate like a real sensor.
    return (
        f"videotestsrc is-live=true pattern=smpte "
        f"! video/x-raw,format=I420,width={args.width},height={args.height},"
        f"framerate={args.fps}/1"
    )


def pipelines(args):
    src = picture(args)
    mounts = {
        # Main profile (CABAC), as cameras send, not the Baseline of x264's fastest preset;
        # a fixed GOP, as cameras send (x264's scene-cut detection makes about two frames in
        # three keyframes of the 1920x1080 colour bars).
        "/h264": f"( {src} ! x264enc tune=zerolatency speed-preset=veryfast "
        f"key-int-max={args.key_int} option-string=scenecut=0 ! video/x-h264,profile=main "
        f"! rtph264pay name=pay0 pt=96 config-interval=-1 )",
        "/mjpeg": f"( {src} ! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26 )",
    }
    if Gst.ElementFactory.find("x265enc") and Gst.ElementFactory.find("rtph265pay"):
        mounts["/h265"] = (
            f"( {src} ! x265enc tune=zerolatency speed-preset=ultrafast "
            f"! rtph265pay name=pay0 pt=96 )"
        )
    return mounts


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free one)")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--key-int", type=int, default=30, help="H.264 frames between key frames")
    p.add_argument("--user", help="require this login (with --password)")
    p.add_argument("--password")
    p.add_argument("--auth", choices=["basic", "digest"], default="basic")
    args = p.parse_args()
    if (args.user is None) != (args.password is None):
        p.error("--user and --password go together")

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    permissions = None
    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "camera-user")
        if args.auth == "digest":
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
            auth.add_digest(args.user, args.password, token)
        else:
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("camera-user", "media.factory.access", True)
        permissions.add_permission_for_role("camera-user", "media.factory.construct", True)

    mounts = server.get_mount_points()
    served = pipelines(args)
    for path, launch in served.items():
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        # One encoder per mount, whatever the number of clients, as a camera has.
        factory.set_shared(True)
        if permissions is not None:
            factory.set_permissions(permissions)
        mounts.add_factory(path, factory)

    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()} {' '.join(served)}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
