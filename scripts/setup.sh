#!/usr/bin/env bash
# Installs what surv needs to build, test and show a window, on Debian/Ubuntu, then nothing else.
# Safe to run again: it installs only what is missing. Needs root or sudo for apt-get.
set -euo pipefail

# To build: cmake + nasm (libjpeg-turbo, built from source by the turbojpeg crate), libclang-dev
# + pkg-config (bindgen for the V4L2 camera bindings). To run the window: libx11-6 + libxcursor1
# (loaded at run time). To check recordings in tests: ffmpeg (ffmpeg, ffprobe), and chromium
# (a recorded MP4 must play in a browser's <video>). nasm also speeds up OpenH264 (built from
# source by the openh264 crate for MP4 recording) about 2.5x. To test the window as a person
# sees it: xvfb, openbox, xdotool, wmctrl, imagemagick. Stand-in cameras and peers: GStreamer's
# RTSP server from Python (gir1.2-gst-rtsp-server-1.0, python3-gi, plugins base/good/ugly for
# jpegenc, rtpjpegpay, x264enc, rtph264pay), gst-launch-1.0 (gstreamer1.0-tools, also the
# comparison in surv-load), a real MQTT broker (mosquitto, mosquitto-clients), and nftables
# and ethtool for the network harnesses (scripts/loss-netns.sh, scripts/hls-netns.sh: loss, and
# veth offloads off). RTSP players that read surv's RTSP server in the
# tests: GStreamer's libav decoders (avdec_h264) and bad plugins (h264parse, sdpdemux), and VLC
# (vlc-bin + vlc-plugin-base, played headless with cvlc). python3-venv: the venv below. janus:
# the WebRTC gateway the Janus test starts (streaming plugin, HTTP transport) on surv's
# --forward (deploy/janus/); the package's own service is not used. systemd: systemd-analyze,
# which checks deploy/surv-server.service in the tests. nginx-light: the HLS edge cache the tests
# run from deploy/nginx-edge.conf (its own processes; the package's service is not used).
PACKAGES=(cmake nasm libclang-dev clang pkg-config libx11-6 libxcursor1 ffmpeg chromium
  xvfb openbox xdotool wmctrl imagemagick
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
  gir1.2-gst-rtsp-server-1.0 python3-gi mosquitto mosquitto-clients nftables ethtool
  gstreamer1.0-libav gstreamer1.0-plugins-bad vlc-bin vlc-plugin-base python3-venv janus systemd nginx-light)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "surv setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The WebRTC tests' independent peer: aiortc (with PyAV's FFmpeg H.264 decoder) from PyPI, in
# a venv of the system Python at .venv (git ignores it); binary wheels only, so nothing is
# compiled. tests/peers/whep_client.py runs on it.
AIORTC_VERSION=1.16.0
VENV="$(cd "$(dirname "$0")/.." && pwd)/.venv"
if ! "$VENV/bin/python" -c "import aiortc, sys; sys.exit(aiortc.__version__ != '$AIORTC_VERSION')" \
    >/dev/null 2>&1; then
  echo "surv setup: installing aiortc $AIORTC_VERSION into $VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --only-binary=:all: \
    "aiortc==$AIORTC_VERSION"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "surv setup: cargo not found. Install Rust (https://rustup.rs) and run this again." >&2
  exit 1
fi

# npm, for packages from the npm registry: Debian's (with its nodejs) where none is installed.
need_npm() {
  if ! command -v npm >/dev/null 2>&1; then
    echo "surv setup: installing npm"
    NPM_SUDO=""
    if [ "$(id -u)" -ne 0 ]; then NPM_SUDO="sudo"; fi
    $NPM_SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $NPM_SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
    command -v npm >/dev/null 2>&1 || { echo "surv setup: npm could not be installed" >&2; exit 1; }
  fi
}

# Object detection (surv-server --detect): a COCO-80 CenterNet (MobileNetV3) from the npm package
# @vladmandic/human (MIT), converted once per machine from TensorFlow.js to ONNX with tf2onnx in
# a throwaway venv (tensorflow-cpu; deleted after), checked by what it sees on tests/photos, and
# ONNX Runtime's shared library from the onnxruntime wheel (PyPI), which the server loads at run
# time. Both are kept in a cache outside the work tree (every clone of this machine shares it)
# and linked into models/ (git ignores it). Run again: nothing to do.
HUMAN_VERSION=3.3.6
ORT_VERSION=1.32.0
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DETECT_CACHE="${SURV_DETECT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/surv/detect}"
DETECT_DONE="$DETECT_CACHE/human-$HUMAN_VERSION-ort-$ORT_VERSION.ok"
if [ ! -f "$DETECT_DONE" ]; then
  echo "surv setup: the detection model (@vladmandic/human $HUMAN_VERSION → ONNX) and ONNX Runtime $ORT_VERSION into $DETECT_CACHE"
  need_npm
  rm -rf "$DETECT_CACHE/work"
  mkdir -p "$DETECT_CACHE/work"
  (
    cd "$DETECT_CACHE/work"
    npm pack -q "@vladmandic/human@$HUMAN_VERSION" >/dev/null
    tar xzf "vladmandic-human-$HUMAN_VERSION.tgz" package/models/centernet.json \
      package/models/centernet.bin package/LICENSE
    /usr/bin/python3 -m venv conv
    conv/bin/pip install -q --disable-pip-version-check --only-binary=:all: \
      tensorflow-cpu==2.21.0 tf2onnx==1.17.0 "onnxruntime==$ORT_VERSION"
    conv/bin/python "$ROOT/scripts/detect/convert_centernet.py" package/models centernet.onnx \
      >convert.log 2>&1 || { cat convert.log >&2; exit 1; }
    TF_CPP_MIN_LOG_LEVEL=3 conv/bin/python "$ROOT/scripts/detect/check_model.py" centernet.onnx \
      "$ROOT/tests/photos" 0.35
    cp conv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION .
  )
  mv "$DETECT_CACHE/work/centernet.onnx" "$DETECT_CACHE/centernet.onnx"
  mv "$DETECT_CACHE/work/libonnxruntime.so.$ORT_VERSION" "$DETECT_CACHE/libonnxruntime.so"
  mv "$DETECT_CACHE/work/package/LICENSE" "$DETECT_CACHE/LICENSE-human"
  rm -rf "$DETECT_CACHE/work"
  touch "$DETECT_DONE"
fi
mkdir -p "$ROOT/models"
ln -sf "$DETECT_CACHE/centernet.onnx" "$ROOT/models/centernet.onnx"
ln -sf "$DETECT_CACHE/libonnxruntime.so" "$ROOT/models/libonnxruntime.so"
ln -sf "$DETECT_CACHE/LICENSE-human" "$ROOT/models/LICENSE-human"

# hls.js (Apache-2.0), the LL-HLS player that web pages use where the browser has no HLS of its
# own (Chromium): the tests and `surv-load --glass` play the camera's playlist with it in
# headless Chromium. From the npm registry, into a cache, linked into models/ as the model is.
HLSJS_VERSION=1.7.4
HLSJS_CACHE="${SURV_HLSJS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/surv/hlsjs}"
if [ ! -f "$HLSJS_CACHE/hls-$HLSJS_VERSION.min.js" ]; then
  echo "surv setup: hls.js $HLSJS_VERSION into $HLSJS_CACHE"
  need_npm
  rm -rf "$HLSJS_CACHE/work"
  mkdir -p "$HLSJS_CACHE/work"
  (
    cd "$HLSJS_CACHE/work"
    npm pack -q "hls.js@$HLSJS_VERSION" >/dev/null
    tar xzf "hls.js-$HLSJS_VERSION.tgz" package/dist/hls.min.js package/LICENSE
  )
  mv "$HLSJS_CACHE/work/package/LICENSE" "$HLSJS_CACHE/LICENSE-hls.js"
  mv "$HLSJS_CACHE/work/package/dist/hls.min.js" "$HLSJS_CACHE/hls-$HLSJS_VERSION.min.js"
  rm -rf "$HLSJS_CACHE/work"
fi
ln -sf "$HLSJS_CACHE/hls-$HLSJS_VERSION.min.js" "$ROOT/models/hls.min.js"
ln -sf "$HLSJS_CACHE/LICENSE-hls.js" "$ROOT/models/LICENSE-hls.js"
