"""Writes Tests/TensorTests/Fixtures/modules/*.json: reference values for Sura's Module layers.

multihead_attention.json — torch.nn.MultiheadAttention on small random inputs, one case per
feature: packed in_proj_weight with a boolean key-padding mask and a float attention mask
(sequence-first), separate q/k/v projections for kdim/vdim with a boolean per-head mask
(batch-first, weights per head), and an unbatched call without bias. Each case stores the
parameter names in PyTorch's named_parameters() order, the parameters, the inputs, the output,
the attention weights, and the gradients of L = sum(output * probe).

Run: /work/refenv/bin/python Tests/Reference/make_module_fixtures.py
"""
import json
import os
import warnings

import torch

# Case 1 mixes a boolean padding mask with a float attention mask on purpose.
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "TensorTests", "Fixtures", "modules")


def tensor_json(t):
    t = t.detach().to(torch.float32).contiguous()
    return {"shape": list(t.shape), "data": [round(float(v), 7) for v in t.reshape(-1).tolist()]}


def make_case(name, seed, embed_dim, num_heads, kdim, vdim, bias, batch_first, n, l, s,
              key_padding_mask=None, attn_mask=None, average=True, unbatched=False):
    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(embed_dim, num_heads, bias=bias, kdim=kdim, vdim=vdim,
                                      batch_first=batch_first)
    # Non-zero biases so that their handling is exercised (PyTorch initialises them to zero).
    with torch.no_grad():
        for pname, p in mha.named_parameters():
            if "bias" in pname:
                p.uniform_(-0.5, 0.5)
    mha.eval()
    kd = kdim or embed_dim
    vd = vdim or embed_dim
    if unbatched:
        q_shape, k_shape, v_shape = [l, embed_dim], [s, kd], [s, vd]
    elif batch_first:
        q_shape, k_shape, v_shape = [n, l, embed_dim], [n, s, kd], [n, s, vd]
    else:
        q_shape, k_shape, v_shape = [l, n, embed_dim], [s, n, kd], [s, n, vd]
    query = torch.randn(q_shape, requires_grad=True)
    key = torch.randn(k_shape, requires_grad=True)
    value = torch.randn(v_shape, requires_grad=True)
    out, weights = mha(query, key, value, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                       need_weights=True, average_attn_weights=average)
    probe = torch.randn(out.shape)
    (out * probe).sum().backward()

    def mask_json(m):
        if m is None:
            return None
        return {"kind": "blocked" if m.dtype == torch.bool else "additive", **tensor_json(m.float())}

    return {
        "name": name,
        "embed_dim": embed_dim, "num_heads": num_heads, "kdim": kd, "vdim": vd,
        "bias": bias, "batch_first": batch_first, "average_weights": average,
        "parameter_names": [pname for pname, _ in mha.named_parameters()],
        "parameters": {pname: tensor_json(p) for pname, p in mha.named_parameters()},
        "query": tensor_json(query), "key": tensor_json(key), "value": tensor_json(value),
        "key_padding_mask": mask_json(key_padding_mask),
        "attn_mask": mask_json(attn_mask),
        "output": tensor_json(out), "weights": tensor_json(weights), "probe": tensor_json(probe),
        "grads": {
            **{pname: tensor_json(p.grad) for pname, p in mha.named_parameters()},
            "query": tensor_json(query.grad), "key": tensor_json(key.grad), "value": tensor_json(value.grad),
        },
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = []
    # 1. Packed projection, sequence-first, boolean padding mask + float attention mask.
    kpm = torch.tensor([[False, False, False, False], [False, False, True, True]])
    torch.manual_seed(100)
    float_mask = torch.randn(3, 4) * 0.7
    cases.append(make_case("packed_seq_first_masks", 1, 8, 2, None, None, True, False, 2, 3, 4,
                           key_padding_mask=kpm, attn_mask=float_mask))
    # 2. Separate projections (kdim, vdim), batch-first, boolean per-head 3-D mask, weights per head.
    n, h, l, s = 2, 4, 3, 5
    torch.manual_seed(200)
    blocked = torch.rand(n * h, l, s) < 0.3
    blocked[:, :, 0] = False  # every query keeps at least one key
    cases.append(make_case("kdim_vdim_batch_first", 2, 8, 4, 5, 6, True, True, n, l, s,
                           attn_mask=blocked, average=False))
    # 3. Unbatched input, no bias.
    cases.append(make_case("unbatched_no_bias", 3, 6, 3, None, None, False, False, 1, 4, 4, unbatched=True))
    with open(os.path.join(OUT, "multihead_attention.json"), "w") as f:
        json.dump({"torch_version": torch.__version__, "cases": cases}, f, separators=(",", ":"))


if __name__ == "__main__":
    main()
