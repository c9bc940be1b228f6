#!/usr/bin/env python3
"""Writes the file-format fixtures for Tests/TensorTests (SafeTensorsTests, GGUFTests, PNGTests).

Run with the reference environment:  /work/refenv/bin/python Tests/Reference/make_format_fixtures.py

Every fixture is written by the reference library itself (safetensors, gguf, Pillow), so the
Swift tests prove byte-level compatibility with what Python users actually produce.
Tensor values follow formulas that the Swift tests recompute independently:
  f32 reference tensor k of n elements: v[i] = float32(i) * float32(0.37) - float32(k)
"""
import os
import struct
import sys

import numpy as np
import torch
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save_file as torch_save_file
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as V
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "TensorTests", "Fixtures", "formats")

# Names chosen to exercise byte-wise ordering: upper case before lower, '.' before '_',
# "10" before "2", and a multi-byte UTF-8 name last.
WRITER_TENSORS = [
    ("z", [3]),
    ("a", [2, 3]),
    ("B", [4]),
    ("a.b", [1, 2, 2]),
    ("a_b", [5]),
    ("layer.10.weight", [2, 2]),
    ("layer.2.weight", [3, 1]),
    ("\u00e9t\u00e9", [2]),
    ("scalar", []),
    ("empty", [0, 3]),
]
TRICKY_NOTE = 'quote " backslash \\ newline \n tab \t bell \x07 del \x7f unicode \u00e9\u2192\U0001F600 slash /'


def writer_values(k, shape):
    n = int(np.prod(shape)) if shape else 1
    v = np.arange(n, dtype=np.float32) * np.float32(0.37) - np.float32(k)
    return v.reshape(shape)


def make_safetensors():
    tensors = {name: writer_values(k, shape) for k, (name, shape) in enumerate(WRITER_TENSORS)}
    np_save_file(tensors, os.path.join(OUT, "st_writer_f32.safetensors"), metadata={"format": "pt"})
    t = {name: torch.from_numpy(v.copy()) for name, v in tensors.items()}
    torch_save_file({k: v.to(torch.float16) for k, v in t.items()},
                    os.path.join(OUT, "st_writer_f16.safetensors"), metadata={"note": TRICKY_NOTE})
    torch_save_file({k: v.to(torch.bfloat16) for k, v in t.items()},
                    os.path.join(OUT, "st_writer_bf16.safetensors"))

    # Every dtype, with small integer values v[i] = (i % 7) - 3 (unsigned: i % 7) that every
    # dtype holds exactly, plus half-precision values that need rounding on the way in.
    base = np.arange(12) % 7
    signed = base - 3
    mixed = {
        "f64": torch.tensor(signed * 0.25, dtype=torch.float64).reshape(3, 4),
        "f32": torch.tensor(signed * 0.5, dtype=torch.float32).reshape(2, 6),
        "f16": torch.tensor(signed * 0.125, dtype=torch.float16).reshape(12),
        "bf16": torch.tensor(signed * 2.0, dtype=torch.bfloat16).reshape(4, 3),
        "i64": torch.tensor(signed * 1000, dtype=torch.int64).reshape(6, 2),
        "i32": torch.tensor(signed * 100, dtype=torch.int32).reshape(12),
        "i16": torch.tensor(signed * 10, dtype=torch.int16).reshape(12),
        "i8": torch.tensor(signed, dtype=torch.int8).reshape(12),
        "u8": torch.tensor(base * 30, dtype=torch.uint8).reshape(12),
        "u16": torch.tensor(base * 9000, dtype=torch.uint16).reshape(12),
        "u32": torch.tensor(base * 600000, dtype=torch.uint32).reshape(12),
        "u64": torch.tensor(base * 5, dtype=torch.uint64).reshape(12),
        "bool": torch.tensor(base % 2 == 1).reshape(12),
        "scalar": torch.tensor(7.5, dtype=torch.float32),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
    }
    torch_save_file(mixed, os.path.join(OUT, "st_all_dtypes.safetensors"),
                    metadata={"format": "pt", "epoch": "3", "note": TRICKY_NOTE})


def random_k_blocks(rng, qtype, n_blocks):
    """Random super-blocks with sane half-precision scale fields (random bytes elsewhere)."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    def halves(lo, hi):
        return rng.uniform(lo, hi, size=n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    if qtype in (Q.Q4_K, Q.Q5_K):
        raw[:, 0:2] = halves(0.001, 0.05)   # d
        raw[:, 2:4] = halves(0.001, 0.05)   # dmin
    elif qtype == Q.Q6_K:
        raw[:, 208:210] = halves(0.001, 0.05)  # d comes last
    return raw


def make_gguf():
    rng = np.random.default_rng(1234)
    path = os.path.join(OUT, "gguf_all_types.gguf")
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.15625)
    w.add_uint64("test.u64", 18000000000000000000)
    w.add_int64("test.i64", -9000000000000000000)
    w.add_float64("test.f64", -2.718281828459045)
    w.add_bool("test.true", True)
    w.add_bool("test.false", False)
    w.add_string("test.string", "h\u00e9llo \u2192 world")
    w.add_array("test.strings", ["a", "bc", "", "d\u00e9f"])
    w.add_array("test.ints", [1, -2, 3])  # int32 per gguf's type inference
    w.add_key_value("test.u16s", [1, 2, 65535], V.ARRAY, sub_type=V.UINT16)
    w.add_array("test.floats", [0.5, -1.25])
    w.add_array("test.bools", [True, False, True])
    w.add_array("test.nested", [["x", "yy"], ["zzz"]])
    w.add_key_value("test.nested_ints", [[1, 2], [3]], V.ARRAY, sub_type=V.ARRAY)

    expected = {}
    def add(name, values_or_raw, qtype, shape):
        w.add_tensor(name, values_or_raw, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
        if qtype == Q.F32:
            expected[name] = values_or_raw.astype(np.float32)
        elif qtype == Q.F16:
            expected[name] = values_or_raw.astype(np.float32)
        else:
            expected[name] = gguf.quants.dequantize(values_or_raw, qtype).reshape(shape).astype(np.float32)

    def normal(shape):
        return rng.normal(0, 1, size=shape).astype(np.float32)

    add("f32", normal((3, 5)), Q.F32, (3, 5))
    add("f16", normal((4, 7)).astype(np.float16), Q.F16, (4, 7))
    for qtype, shape in [(Q.BF16, (2, 9)), (Q.Q8_0, (4, 64)), (Q.Q4_0, (2, 96)), (Q.Q4_1, (3, 64)),
                         (Q.Q5_0, (2, 64)), (Q.Q5_1, (2, 64))]:
        add(qtype.name.lower(), gguf.quants.quantize(normal(shape), qtype), qtype, shape)
    add("q8_0_3d", gguf.quants.quantize(normal((2, 3, 32)), Q.Q8_0), Q.Q8_0, (2, 3, 32))
    for qtype, shape in [(Q.Q4_K, (2, 512)), (Q.Q5_K, (2, 256)), (Q.Q6_K, (4, 256))]:
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = shape[0] * shape[1] // block
        raw = random_k_blocks(rng, qtype, n_blocks).reshape(shape[0], shape[1] // block * type_size)
        add(qtype.name.lower(), raw, qtype, shape)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    np_save_file({k: np.ascontiguousarray(v) for k, v in expected.items()},
                 os.path.join(OUT, "gguf_all_types_expected.safetensors"))

    # A second file with a custom alignment; odd sizes force padding between tensors.
    w = gguf.GGUFWriter(os.path.join(OUT, "gguf_align64.gguf"), arch="test")
    w.add_custom_alignment(64)
    w.add_tensor("first", np.arange(3, dtype=np.float32))
    w.add_tensor("second", (np.arange(10, dtype=np.float32) * 0.5).reshape(2, 5))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def pixel(x, y, c):
    return (x * 37 + y * 11 + c * 71) % 256


def make_png():
    width, height = 5, 4
    def plane(channels, scale=1):
        a = np.zeros((height, width, channels), dtype=np.uint32)
        for y in range(height):
            for x in range(width):
                for c in range(channels):
                    a[y, x, c] = pixel(x, y, c) * scale
        return a
    Image.fromarray(plane(1)[:, :, 0].astype(np.uint8), "L").save(os.path.join(OUT, "png_gray.png"))
    Image.fromarray(plane(2).astype(np.uint8), "LA").save(os.path.join(OUT, "png_gray_alpha.png"))
    Image.fromarray(plane(3).astype(np.uint8), "RGB").save(os.path.join(OUT, "png_rgb.png"))
    Image.fromarray(plane(4).astype(np.uint8), "RGBA").save(os.path.join(OUT, "png_rgba.png"))
    # 16-bit gray, value = pixel × 257, so the 8-bit reading is exactly `pixel`.
    Image.fromarray(plane(1, 257)[:, :, 0].astype(np.uint16)).save(os.path.join(OUT, "png_gray16.png"))
    # Palette of 16 colours k → (16k, 255 − 16k, 40k mod 256), index (x + y·width) mod 16,
    # with transparency 17k for every entry.
    img = Image.new("P", (width, height))
    img.putpalette([v for k in range(16) for v in (16 * k, 255 - 16 * k, (40 * k) % 256)])
    img.putdata([(x + y * width) % 16 for y in range(height) for x in range(width)])
    img.info["transparency"] = bytes(17 * k for k in range(16))
    img.save(os.path.join(OUT, "png_palette.png"), transparency=bytes(17 * k for k in range(16)))


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    make_safetensors()
    make_gguf()
    make_png()
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT)
                if f.startswith(("st_", "gguf_", "png_")))
    print(f"wrote fixtures to {os.path.normpath(OUT)} ({total} bytes)", file=sys.stderr)
