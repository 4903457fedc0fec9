"""Converts @vladmandic/human's CenterNet (TensorFlow.js graph model, COCO-80) to ONNX.

Usage: python convert_centernet.py MODEL_DIR OUT.onnx
MODEL_DIR holds centernet.json and centernet.bin from the npm package. Run by scripts/setup.sh in
a throwaway venv with tensorflow-cpu and tf2onnx; the result needs neither.

Two patches for today's TensorFlow and numpy, both about attributes the TF.js export left out:
its fused convolutions lack `TArgs` (the types of their extra inputs, all float here) and its
TopKV2 lacks `index_type` (int32, TF's default); tf2onnx 1.17 still calls `np.product`,
which numpy 2 removed.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np

if not hasattr(np, "product"):
    np.product = np.prod

from tf2onnx import convert  # noqa: E402  (after the numpy patch)


def patch(graph):
    for node in graph["modelTopology"]["node"]:
        attr = node.setdefault("attr", {})
        if node["op"] in ("_FusedConv2D", "FusedDepthwiseConv2dNative") and "TArgs" not in attr:
            n = int(attr.get("num_args", {}).get("i", "1"))
            attr["TArgs"] = {"list": {"type": ["DT_FLOAT"] * n}}
        if node["op"] == "TopKV2" and "index_type" not in attr:
            attr["index_type"] = {"type": "DT_INT32"}
    return graph


def main():
    src, out = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(src, "centernet.json")) as f:
            graph = patch(json.load(f))
        with open(os.path.join(tmp, "centernet.json"), "w") as f:
            json.dump(graph, f)
        shutil.copy(os.path.join(src, "centernet.bin"), tmp)
        sys.argv = [
            "tf2onnx.convert",
            "--tfjs", os.path.join(tmp, "centernet.json"),
            "--output", out,
            "--opset", "13",
        ]
        convert.main()


if __name__ == "__main__":
    main()
