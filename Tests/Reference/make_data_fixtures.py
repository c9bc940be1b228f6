#!/usr/bin/env python3
"""Writes the fixtures for Tests/DataTests (ManifestTests, FashionMNISTTests).

Run with the reference environment:  /work/refenv/bin/python Tests/Reference/make_data_fixtures.py

- manifest/: a two-record SUR-adapter style dataset (metadata.jsonl beside the images, one image
  in a subfolder, a blank line between the records, extra fields), images written by Pillow.
- idx/: a three-image Fashion-MNIST style IDX pair compressed by Python's gzip, in the exact
  layout of the real files. Pixel (r, c) of image k is (k * 50 + r * 28 + c) % 256; labels 9, 0, 3.
"""
import gzip
import json
import os
import struct

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "DataTests", "Fixtures")


def write_manifest():
    root = os.path.join(OUT, "manifest")
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    Image.new("RGB", (4, 3), (255, 0, 0)).save(os.path.join(root, "red.png"))
    Image.new("L", (2, 2), 128).save(os.path.join(root, "sub", "gray.png"))
    lines = [
        {"file_name": "red.png", "text": "a red square", "prompt": "1 object, red square at center, black background",
         "split": "train", "score": 0.5},
        None,  # a blank line: still counted in line numbers
        {"file_name": "sub/gray.png", "text": "a gray square", "prompt": "1 object, gray square, black background",
         "split": "heldout", "tags": ["small", "gray"], "scene": {"canvas": 2}},
    ]
    with open(os.path.join(root, "metadata.jsonl"), "w") as f:
        for line in lines:
            f.write("" if line is None else json.dumps(line))
            f.write("\n")


def write_idx():
    root = os.path.join(OUT, "idx")
    os.makedirs(root, exist_ok=True)
    n = 3
    pixels = bytes((k * 50 + r * 28 + c) % 256 for k in range(n) for r in range(28) for c in range(28))
    images = struct.pack(">IIII", 0x00000803, n, 28, 28) + pixels
    labels = struct.pack(">II", 0x00000801, n) + bytes([9, 0, 3])
    # mtime=0 keeps the files byte-identical between runs.
    with open(os.path.join(root, "tiny-images-idx3-ubyte.gz"), "wb") as f:
        f.write(gzip.compress(images, mtime=0))
    with open(os.path.join(root, "tiny-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(gzip.compress(labels, mtime=0))


if __name__ == "__main__":
    write_manifest()
    write_idx()
    print("wrote", OUT)
