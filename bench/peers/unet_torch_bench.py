#!/usr/bin/env python3
"""Peer for `sura bench unet`: diffusers' UNet2DConditionModel on the CPU with the same config,
batch and thread count. Prints one JSON object with forward and forward+backward milliseconds.
Install with `pip install torch diffusers`.
"""
import argparse
import json
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True, help="a diffusers UNet2DConditionModel config.json")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    try:
        import torch
        from diffusers import UNet2DConditionModel
    except ImportError:
        print(json.dumps({"error": "torch and diffusers are not installed"}))
        return 0
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with open(a.config) as f:
        config = json.load(f)
    model = UNet2DConditionModel.from_config(config).float()
    size = config.get("sample_size", 32)
    size = size if isinstance(size, int) else size[0]
    x = torch.randn(a.batch, config["in_channels"], size, size)
    t = torch.randint(0, 1000, (a.batch,))
    ctx = torch.randn(a.batch, a.tokens, config["cross_attention_dim"])

    def forward():
        with torch.no_grad():
            model(x, t, ctx).sample

    def forward_backward():
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        model(xi, t, ctx).sample.square().mean().backward()

    def best(fn):
        fn()
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times) * 1e3

    print(json.dumps({"peer": "pytorch", "torch": torch.__version__, "threads": a.threads,
                      "forward_ms": best(forward), "forward_backward_ms": best(forward_backward)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
