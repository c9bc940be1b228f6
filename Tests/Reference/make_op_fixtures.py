#!/usr/bin/env python3
"""Writes PyTorch reference values for Sura's neural-network ops.

Usage: /work/refenv/bin/python Tests/Reference/make_op_fixtures.py
Output: Tests/TensorTests/Fixtures/ops/<family>.json, read by NNOpTests.swift.

Every case holds small random float32 inputs, the op's output, a fixed random probe w of the
output's shape, and the gradients of L = sum(out * w) with respect to every differentiable input.
Inputs are drawn in float32 and the op runs in float64, so the references are the exact values
of the float32 inputs (Sura computes in float32 and must match within about 1e-5 relative).
"""
import json
import os
import warnings

import torch
import torch.nn.functional as F

OUT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "TensorTests", "Fixtures", "ops"))
gen = torch.Generator().manual_seed(20240611)


def uniform(*shape, low=-1.0, high=1.0):
    x = torch.rand(tuple(shape), generator=gen, dtype=torch.float32) * (high - low) + low
    return x.double()


def normal(*shape):
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32).double()


def encode(t):
    return {"shape": list(t.shape), "data": [float(v) for v in t.detach().reshape(-1).tolist()]}


def case(name, op, params, inputs, fn, differentiable=None):
    """Runs fn(**inputs) in float64 and records output, probe and gradients."""
    differentiable = list(inputs) if differentiable is None else differentiable
    leaves = {k: v.clone().requires_grad_(k in differentiable) for k, v in inputs.items()}
    out = fn(**leaves)
    probe = normal(*out.shape)
    (out * probe).sum().backward()
    return {
        "name": name,
        "op": op,
        "params": {k: (v if isinstance(v, list) else [v]) for k, v in params.items()},
        "inputs": {k: encode(v) for k, v in inputs.items()},
        "output": encode(out),
        "probe": encode(probe),
        "grads": {k: encode(leaves[k].grad) for k in differentiable},
    }


def conv_cases():
    cases = []
    configs = [
        # name, x shape, w shape, bias, stride, padding, dilation, groups
        ("basic", [2, 3, 5, 6], [4, 3, 3, 3], True, (1, 1), (0, 0), (1, 1), 1),
        ("stride2_pad1_dil2_groups2", [2, 4, 7, 8], [6, 2, 3, 3], True, (2, 2), (1, 1), (2, 2), 2),
        ("asymmetric", [1, 3, 6, 5], [2, 3, 2, 3], False, (2, 1), (0, 2), (1, 2), 1),
        ("pointwise", [2, 4, 3, 3], [6, 4, 1, 1], True, (1, 1), (0, 0), (1, 1), 1),
        ("pointwise_grouped", [2, 4, 3, 3], [4, 2, 1, 1], False, (1, 1), (0, 0), (1, 1), 2),
        ("depthwise_pad1", [1, 4, 5, 5], [4, 1, 3, 3], True, (1, 1), (1, 1), (1, 1), 4),
        ("stride2_pad1", [3, 2, 6, 6], [3, 2, 3, 3], True, (2, 2), (1, 1), (1, 1), 1),
    ]
    for name, xs, ws, has_bias, stride, padding, dilation, groups in configs:
        inputs = {"x": uniform(*xs), "weight": uniform(*ws)}
        if has_bias:
            inputs["bias"] = uniform(ws[0])
        params = {"stride": list(stride), "padding": list(padding), "dilation": list(dilation), "groups": groups}
        cases.append(case(name, "conv2d", params, inputs,
                          lambda x, weight, bias=None: F.conv2d(x, weight, bias, stride, padding, dilation, groups)))
    return cases


def norm_cases():
    cases = []
    x = uniform(3, 4, 5, low=-2, high=2)
    cases.append(case("layer_norm_last", "layer_norm", {"normalized_shape": [5], "eps": 1e-5},
                      {"x": x, "weight": uniform(5), "bias": uniform(5)},
                      lambda x, weight, bias: F.layer_norm(x, [5], weight, bias, 1e-5)))
    cases.append(case("layer_norm_two_dims", "layer_norm", {"normalized_shape": [4, 5], "eps": 1e-5},
                      {"x": x, "weight": uniform(4, 5), "bias": uniform(4, 5)},
                      lambda x, weight, bias: F.layer_norm(x, [4, 5], weight, bias, 1e-5)))
    cases.append(case("layer_norm_plain", "layer_norm", {"normalized_shape": [5], "eps": 1e-3},
                      {"x": x}, lambda x: F.layer_norm(x, [5], None, None, 1e-3)))
    cases.append(case("layer_norm_offset_rows", "layer_norm", {"normalized_shape": [16], "eps": 1e-5},
                      {"x": uniform(2, 16) + 3.0, "weight": uniform(16), "bias": uniform(16)},
                      lambda x, weight, bias: F.layer_norm(x, [16], weight, bias, 1e-5)))
    g = uniform(2, 6, 3, 4, low=-2, high=2)
    cases.append(case("group_norm_affine", "group_norm", {"groups": 3, "eps": 1e-5},
                      {"x": g, "weight": uniform(6), "bias": uniform(6)},
                      lambda x, weight, bias: F.group_norm(x, 3, weight, bias, 1e-5)))
    cases.append(case("group_norm_plain", "group_norm", {"groups": 2, "eps": 1e-5},
                      {"x": g}, lambda x: F.group_norm(x, 2, None, None, 1e-5)))
    cases.append(case("group_norm_3d_one_group", "group_norm", {"groups": 1, "eps": 1e-6},
                      {"x": uniform(2, 4, 5), "weight": uniform(4), "bias": uniform(4)},
                      lambda x, weight, bias: F.group_norm(x, 1, weight, bias, 1e-6)))
    cases.append(case("group_norm_per_channel", "group_norm", {"groups": 4, "eps": 1e-5},
                      {"x": uniform(2, 4, 2, 3), "weight": uniform(4), "bias": uniform(4)},
                      lambda x, weight, bias: F.group_norm(x, 4, weight, bias, 1e-5)))
    r = uniform(3, 7, low=-2, high=2)
    cases.append(case("rms_norm_weight", "rms_norm", {"eps": 1e-6}, {"x": r, "weight": uniform(7)},
                      lambda x, weight: F.rms_norm(x, [7], weight, 1e-6)))
    cases.append(case("rms_norm_plain", "rms_norm", {"eps": 1e-5}, {"x": uniform(2, 3, 4)},
                      lambda x: F.rms_norm(x, [4], None, 1e-5)))
    return cases


def softmax_cases():
    cases = []
    x = uniform(3, 4, 5, low=-3, high=3)
    for axis in (-1, 1, 0):
        cases.append(case(f"softmax_axis{axis}", "softmax", {"axis": axis}, {"x": x},
                          lambda x: F.softmax(x, dim=axis)))
        cases.append(case(f"log_softmax_axis{axis}", "log_softmax", {"axis": axis}, {"x": x},
                          lambda x: F.log_softmax(x, dim=axis)))
    big = uniform(2, 6, low=-3, high=3) + 1000.0
    cases.append(case("softmax_large_values", "softmax", {"axis": -1}, {"x": big}, lambda x: F.softmax(x, dim=-1)))
    return cases


def attention_cases():
    cases = []
    q, k, v = uniform(2, 3, 4, 8), uniform(2, 3, 6, 8), uniform(2, 3, 6, 5)
    cases.append(case("plain", "attention", {"causal": 0}, {"q": q, "k": k, "v": v},
                      lambda q, k, v: F.scaled_dot_product_attention(q, k, v)))
    mask = uniform(4, 6)
    mask[0, 5] = -1e9
    mask[2, 0] = -1e9
    cases.append(case("additive_mask", "attention", {"causal": 0}, {"q": q, "k": k, "v": v, "mask": mask},
                      lambda q, k, v, mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))
    bmask = uniform(2, 1, 4, 6)
    cases.append(case("broadcast_mask_scale", "attention", {"causal": 0, "scale": 0.3},
                      {"q": q, "k": k, "v": v, "mask": bmask},
                      lambda q, k, v, mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)))
    q5, k5, v5 = uniform(2, 5, 4), uniform(2, 5, 4), uniform(2, 5, 3)
    cases.append(case("causal", "attention", {"causal": 1}, {"q": q5, "k": k5, "v": v5},
                      lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)))
    # Bottom-right aligned causal mask for Lq < Lk (Sura's convention, PyTorch via an explicit mask).
    q3 = uniform(2, 3, 4)
    offset_mask = torch.zeros(3, 5, dtype=torch.float64)
    for i in range(3):
        for j in range(5):
            if j > i + 2:
                offset_mask[i, j] = float("-inf")
    cases.append(case("causal_with_cache", "attention", {"causal": 1}, {"q": q3, "k": k5, "v": v5},
                      lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=offset_mask)))
    return cases


def misc_cases():
    cases = []
    table = uniform(7, 4)
    ids = [1, 3, 3, 0, 6, 1]
    cases.append(case("embedding_repeated_ids", "embedding", {"ids": ids, "ids_shape": [2, 3]}, {"table": table},
                      lambda table: F.embedding(torch.tensor(ids).reshape(2, 3), table)))
    x = uniform(2, 3, 2, 3)
    cases.append(case("upsample_2x2", "upsample_nearest", {"scale": [2, 2]}, {"x": x},
                      lambda x: F.interpolate(x, scale_factor=(2, 2), mode="nearest")))
    cases.append(case("upsample_3x1", "upsample_nearest", {"scale": [3, 1]}, {"x": x},
                      lambda x: F.interpolate(x, scale_factor=(3, 1), mode="nearest")))
    cases.append(case("linear_batched", "linear", {}, {"x": uniform(2, 3, 5), "weight": uniform(4, 5), "bias": uniform(4)},
                      lambda x, weight, bias: F.linear(x, weight, bias)))
    cases.append(case("linear_2d_no_bias", "linear", {}, {"x": uniform(6, 5), "weight": uniform(3, 5)},
                      lambda x, weight: F.linear(x, weight)))
    cases.append(case("linear_vector", "linear", {}, {"x": uniform(5), "weight": uniform(3, 5), "bias": uniform(3)},
                      lambda x, weight, bias: F.linear(x, weight, bias)))
    return cases


def loss_cases():
    cases = []
    p, t = uniform(3, 4), uniform(3, 4)
    for red in ("mean", "sum", "none"):
        cases.append(case(f"mse_{red}", "mse", {"reduction": ["mean", "sum", "none"].index(red)},
                          {"prediction": p, "target": t},
                          lambda prediction, target: F.mse_loss(prediction, target, reduction=red)))
    logits = uniform(5, 7, low=-3, high=3)
    targets = [2, -100, 6, 0, 2]
    for red in ("mean", "sum", "none"):
        cases.append(case(f"cross_entropy_{red}", "cross_entropy",
                          {"targets": targets, "ignore_index": -100, "reduction": ["mean", "sum", "none"].index(red)},
                          {"logits": logits},
                          lambda logits: F.cross_entropy(logits, torch.tensor(targets), ignore_index=-100, reduction=red)))
    cases.append(case("cross_entropy_ignore_class", "cross_entropy",
                      {"targets": targets[:1] + [1] + targets[2:], "ignore_index": 2, "reduction": 0},
                      {"logits": logits},
                      lambda logits: F.cross_entropy(logits, torch.tensor(targets[:1] + [1] + targets[2:]), ignore_index=2)))
    # reduction="mean" averages over every element (PyTorch warns that this will change).
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides the total loss")
    inp = F.log_softmax(normal(4, 6), dim=-1).float().double()
    tgt = F.softmax(normal(4, 6), dim=-1).float().double()
    names = ["mean", "sum", "none", "batchmean"]
    for red in names:
        cases.append(case(f"kl_div_{red}", "kl_div", {"reduction": names.index(red), "log_target": 0},
                          {"input": inp, "target": tgt},
                          lambda input, target: F.kl_div(input, target, reduction=red)))
    log_tgt = tgt.log().float().double()
    cases.append(case("kl_div_log_target", "kl_div", {"reduction": 3, "log_target": 1},
                      {"input": inp, "target": log_tgt},
                      lambda input, target: F.kl_div(input, target, reduction="batchmean", log_target=True)))
    zero_tgt = tgt.clone()
    zero_tgt[1, 2] = 0.0
    cases.append(case("kl_div_zero_target", "kl_div", {"reduction": 1, "log_target": 0},
                      {"input": inp, "target": zero_tgt},
                      lambda input, target: F.kl_div(input, target, reduction="sum"), differentiable=["input"]))
    return cases


def main():
    os.makedirs(OUT, exist_ok=True)
    families = {
        "conv2d": conv_cases(), "norms": norm_cases(), "softmax": softmax_cases(),
        "attention": attention_cases(), "misc": misc_cases(), "losses": loss_cases(),
    }
    for family, cases in families.items():
        path = os.path.join(OUT, f"{family}.json")
        with open(path, "w") as f:
            json.dump({"torch": torch.__version__, "cases": cases}, f, separators=(",", ":"))
        print(f"{path}: {len(cases)} cases, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
