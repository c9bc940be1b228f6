#!/usr/bin/env python3
"""Writes the parity fixtures of SUR-adapter (with its distillation loss) and LLM4GEN's
Cross-Adapter Module for Tests/ModelsTests/AdapterParityTests.swift.

The reference modules are re-stated here in PyTorch, structured so that `state_dict()` gives the
names the original repositories produce:

* SUR-adapter (Qrange-group/SUR-adapter, SUR_adapter.py, SUR_adapter_train.py): `encoder_layer`
  (nn.TransformerEncoder's template, registered but never run), `transformer_encoder.layers.N`
  (post-norm nn.TransformerEncoderLayer, ReLU), `attention.{query,key,value}_layer`,
  `attention.output_layer.{0,2}` (single head, V = the raw text features, so `value_layer` is
  unused), `fc` (zero weight at init). Output = η·fc(attention(encoder(x), x)) + (1 − η)·x.
  The original builds the encoder layer without batch_first and feeds it [B, L, D], so attention
  runs across the batch: `sur_slip_*` reproduces that, `sur_*` uses batch_first=True (Sura's
  default). Sura adds the frozen `llm_resize.fc` (the original's LLMResize, kept outside its
  adapter) and pools the LLM's token states by a masked mean before it; the distillation loss is
  the original's `distillation_loss` (KL over channels, batchmean).
  The original hard-codes 8 heads, FFN 2048 and dropout 0.1; the small config here uses 4 heads,
  FFN 64 and dropout 0 (Sura's config keys `heads`, `dim_feedforward`, `dropout`).
* LLM4GEN (YUHANG-Ma/LLM4GEN, infer_llm4gen_sd15.py): `LLMFusionModule` with
  `CrossFusionModule.0.{llm_proj, q_proj, k_proj, v_proj, out_proj, q_norm, kv_norm, norm, FFN.0,
  FFN.2}`; LLM tokens query the text tokens; output = cat(text, enhanced LLM tokens). Sura's mask
  (zeroing padded enhanced tokens) is applied on top for case 1.

Weights are random and seeded; zero-initialised ones get random values too so that parity
exercises them. Expected values are computed in float64 from the same float32 weights and inputs.

Layout under Tests/ModelsTests/Fixtures/adapters/:
  sur_config.json, sur_weights.safetensors, sur_io.safetensors
  sur_slip_config.json, sur_slip_weights.safetensors, sur_slip_io.safetensors
  cam_config.json, cam_weights.safetensors, cam_io.safetensors

SUR io keys: `text`, `complex`, `llm_hidden`, `llm_mask`, `r`; `out`, `encoder_out`, `fc_out`,
`llm_feature` (the projected pooled LLM feature), `llm_loss`, `prompt_loss`; the gradients of
sum(out·R) + llm_loss + prompt_loss: `grad_text`, `grad_complex`, `grad_llm_hidden` and
`param_grad.<name>` for every parameter that gets one.
CAM io keys: `text`, `llm`, `llm_mask`; per case c (0: no mask, 1: mask) `r_c`, `out_c`,
`grad_text_c`, `grad_llm_c`, `param_grad_c.<name>`.

Run: /work/refenv/bin/python Tests/Reference/make_adapter_fixtures_sur_cam.py
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ModelsTests", "Fixtures", "adapters")


# MARK: SUR-adapter

class SURAttention(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.hidden_size = hidden_size
        self.query_layer = nn.Linear(hidden_size, hidden_size)
        self.key_layer = nn.Linear(hidden_size, hidden_size)
        self.value_layer = nn.Linear(hidden_size, hidden_size)  # registered, never applied
        self.output_layer = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(),
                                          nn.Linear(hidden_size, hidden_size))

    def forward(self, query, key, value):
        q = self.query_layer(query)
        k = self.key_layer(key)
        scores = q @ k.transpose(-2, -1) / torch.sqrt(torch.tensor(self.hidden_size, dtype=torch.float32))
        attended = F.softmax(scores, dim=-1) @ value + value
        return self.output_layer(attended) + attended


class LLMResize(nn.Module):
    def __init__(self, llm_size, sd_text_size):
        super().__init__()
        self.fc = nn.Linear(llm_size, sd_text_size)

    def forward(self, x):
        return self.fc(x)


class SURAdapter(nn.Module):
    def __init__(self, output_dim, depth, heads, dim_feedforward, adapter_weight, slip, llm_dim):
        super().__init__()
        self.adapter_weight = adapter_weight
        self.encoder_layer = nn.TransformerEncoderLayer(d_model=output_dim, nhead=heads,
                                                        dim_feedforward=dim_feedforward, dropout=0.0,
                                                        batch_first=not slip)
        self.transformer_encoder = nn.TransformerEncoder(self.encoder_layer, num_layers=depth,
                                                         enable_nested_tensor=False)
        self.attention = SURAttention(output_dim)
        self.fc = nn.Linear(output_dim, output_dim)
        nn.init.zeros_(self.fc.weight)
        self.llm_resize = LLMResize(llm_dim, output_dim)
        self.llm_resize.requires_grad_(False)

    def forward(self, x):
        encoded = self.transformer_encoder(x)
        fc_out = self.fc(self.attention(query=encoded, key=x, value=x))
        return self.adapter_weight * fc_out + (1 - self.adapter_weight) * x, encoded, fc_out

    def llm_feature(self, hidden, mask):
        # Sura's pooling: masked mean over the LLM's tokens, then the frozen projection.
        m = mask.unsqueeze(-1)
        pooled = (hidden * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1)
        return self.llm_resize(pooled)


def distillation_loss(x, y, temperature=1.0):
    """The original's: KL(softmax(y/T) ‖ softmax(x/T)) over channels, batchmean, times T²."""
    log_q = F.log_softmax(x / temperature, dim=-1)
    p = F.softmax(y / temperature, dim=-1)
    if log_q.shape != p.shape:
        log_q = log_q.expand_as(p)  # what broadcasting in F.kl_div does; explicit to avoid its warning
    return F.kl_div(log_q, p, reduction="batchmean") * temperature * temperature


# MARK: LLM4GEN Cross-Adapter Module

class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class CrossFusion(nn.Module):
    def __init__(self, llama_dim, dim, heads):
        super().__init__()
        self.num_heads = heads
        self.dim = dim
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.llm_proj = nn.Linear(llama_dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(dim)
        self.kv_norm = nn.LayerNorm(dim)
        self.norm = nn.LayerNorm(dim)
        self.FFN = nn.Sequential(nn.Linear(dim, dim * 4), QuickGELU(), nn.Linear(dim * 4, dim))

    def forward(self, clip_embed, llm_embed):
        b = llm_embed.shape[0]
        llm_embed = self.llm_proj(llm_embed)
        kv = self.q_norm(clip_embed)      # the original's names: q_norm normalises the text tokens
        q = self.kv_norm(llm_embed)       # and kv_norm the LLM tokens (the queries)
        query = self.q_proj(q).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(kv).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(kv).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        weights = ((query @ key.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (weights @ value).transpose(1, 2).reshape(b, -1, self.dim)
        llm_embed = self.out_proj(out) + llm_embed
        llm_embed = self.FFN(self.norm(llm_embed)) + llm_embed
        return torch.cat((clip_embed, llm_embed), dim=1)


class LLMFusionModule(nn.Module):
    def __init__(self, clip_dim, llm_dim, num_heads):
        super().__init__()
        self.CrossFusionModule = nn.ModuleList([CrossFusion(llm_dim, clip_dim, num_heads)])

    def forward(self, clip_text, llm_text):
        for module in self.CrossFusionModule:
            clip_text = module(clip_text, llm_text)
        return clip_text


# MARK: Fixture writing

def randomize(model, generator):
    """Every parameter gets a seeded random value, including those initialised to zero or one."""
    with torch.no_grad():
        for name, p in model.named_parameters():  # frozen ones (llm_resize) included
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)


def f64(t):
    return t.float().double()


def save(name, tensors):
    path = os.path.join(ROOT, name)
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, path)
    assert os.path.getsize(path) < 2_000_000, f"{name} is {os.path.getsize(path)} bytes"


def write_config(name, config):
    with open(os.path.join(ROOT, name), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


def sur_fixtures(prefix, slip, seed):
    config = dict(output_dim=32, depth=2, heads=4, dim_feedforward=64, dropout=0.0, adapter_weight=0.1,
                  reference_batch_first_slip=slip, llm_dim=48)
    g = torch.Generator().manual_seed(seed)
    model = SURAdapter(config["output_dim"], config["depth"], config["heads"], config["dim_feedforward"],
                       config["adapter_weight"], slip, config["llm_dim"])
    randomize(model, g)
    write_config(f"{prefix}_config.json", config)
    save(f"{prefix}_weights.safetensors", model.state_dict())
    model = model.double().train()  # dropout is 0; train mode keeps PyTorch off its fused fast path

    batch, length, llm_length, d = 3, 5, 6, config["output_dim"]
    text = f64(torch.randn(batch, length, d, generator=g)).requires_grad_(True)
    complex_prompt = f64(torch.randn(batch, length, d, generator=g)).requires_grad_(True)
    llm_hidden = f64(torch.randn(batch, llm_length, config["llm_dim"], generator=g)).requires_grad_(True)
    llm_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=torch.float64)
    r = f64(torch.randn(batch, length, d, generator=g))

    out, encoded, fc_out = model(text)
    llm_feature = model.llm_feature(llm_hidden, llm_mask)
    llm_loss = distillation_loss(llm_feature, encoded)
    prompt_loss = distillation_loss(complex_prompt, out)
    ((out * r).sum() + llm_loss + prompt_loss).backward()

    io = {"text": text.detach(), "complex": complex_prompt.detach(), "llm_hidden": llm_hidden.detach(),
          "llm_mask": llm_mask, "r": r, "out": out.detach(), "encoder_out": encoded.detach(),
          "fc_out": fc_out.detach(), "llm_feature": llm_feature.detach(),
          "llm_loss": llm_loss.detach().reshape(1), "prompt_loss": prompt_loss.detach().reshape(1),
          "grad_text": text.grad, "grad_complex": complex_prompt.grad, "grad_llm_hidden": llm_hidden.grad}
    for name, p in model.named_parameters():
        if p.grad is not None:
            io[f"param_grad.{name}"] = p.grad.clone()
    dead = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    assert all(n.startswith("encoder_layer.") or n.startswith("attention.value_layer.") for n in dead), dead
    save(f"{prefix}_io.safetensors", io)


def cam_fixtures(seed):
    config = dict(output_dim=32, llm_dim=48, heads=8)
    g = torch.Generator().manual_seed(seed)
    model = LLMFusionModule(config["output_dim"], config["llm_dim"], config["heads"])
    randomize(model, g)
    write_config("cam_config.json", config)
    save("cam_weights.safetensors", model.state_dict())
    model = model.double().train()

    batch, text_length, llm_length = 2, 5, 6
    text = f64(torch.randn(batch, text_length, config["output_dim"], generator=g))
    llm = f64(torch.randn(batch, llm_length, config["llm_dim"], generator=g))
    llm_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.float64)
    io = {"text": text, "llm": llm, "llm_mask": llm_mask}
    for case, masked in (("0", False), ("1", True)):
        model.zero_grad()
        t = text.clone().requires_grad_(True)
        h = llm.clone().requires_grad_(True)
        out = model(t, h)
        if masked:  # Sura zeroes the enhanced LLM tokens at padded positions
            out = torch.cat([out[:, :text_length], out[:, text_length:] * llm_mask.unsqueeze(-1)], dim=1)
        r = f64(torch.randn(out.shape, generator=g))
        (out * r).sum().backward()
        io[f"r_{case}"] = r
        io[f"out_{case}"] = out.detach()
        io[f"grad_text_{case}"] = t.grad
        io[f"grad_llm_{case}"] = h.grad
        for name, p in model.named_parameters():
            io[f"param_grad_{case}.{name}"] = p.grad.clone()
    save("cam_io.safetensors", io)


def main():
    os.makedirs(ROOT, exist_ok=True)
    torch.manual_seed(0)
    sur_fixtures("sur", slip=False, seed=21)
    sur_fixtures("sur_slip", slip=True, seed=21)
    cam_fixtures(seed=22)
    for f in sorted(os.listdir(ROOT)):
        if f.startswith(("sur_", "cam_")):
            print(f"{f}: {os.path.getsize(os.path.join(ROOT, f))} bytes")


if __name__ == "__main__":
    main()
