"""Checks a converted detector by what it sees, not by its bytes (two conversions differ).

Usage: python check_model.py MODEL.onnx PHOTOS_DIR THRESHOLD
The astronaut photo must give a person at THRESHOLD or above, the cat and the coffee cup none.
Runs in the conversion venv (onnxruntime, and TensorFlow to decode and resize as the server
does: the whole frame stretched to 512x512, RGB 0-255).
"""
import os
import sys

import numpy as np
import onnxruntime as ort
import tensorflow as tf

PERSON = 0


def best_person(session, path):
    img = tf.image.decode_jpeg(open(path, "rb").read(), channels=3)
    x = tf.image.resize(tf.cast(img, tf.float32), (512, 512)).numpy()[None]
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    rows = next(o for o in outputs if o.shape[-1] == 6)[0]
    scores = [float(r[4]) for r in rows if int(r[5]) == PERSON]
    return max(scores, default=0.0)


def main():
    model, photos, threshold = sys.argv[1], sys.argv[2], float(sys.argv[3])
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    failures = []
    for name, want in (("astronaut.jpg", True), ("chelsea.jpg", False), ("coffee.jpg", False)):
        score = best_person(session, os.path.join(photos, name))
        print(f"check: {name}: best person score {score:.3f}")
        if (score >= threshold) != want:
            failures.append(f"{name}: person score {score:.3f}, expected {'>=' if want else '<'} {threshold}")
    if failures:
        sys.exit("the converted model does not see what it should: " + "; ".join(failures))


if __name__ == "__main__":
    main()
