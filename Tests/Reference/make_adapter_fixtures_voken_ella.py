#!/usr/bin/env python3
"""Writes the parity fixtures of the MiniGPT-5 voken mapper and the ELLA connector for
Tests/ModelsTests/AdapterParityTests.swift.

The two reference modules are re-stated here in PyTorch, structured so that `state_dict()` gives
the names the original repositories produce:

* MiniGPT-5 (eric-ai-lab/MiniGPT-5, model.py): `fc` = Sequential(Linear, GELU, Linear),
  `llm_to_t2i_mapping` = nn.Transformer(batch_first, norm_first, dropout 0), and the learnable
  decoder queries `t2i_decoder_prompt` [1, Q, d]. Output = transformer(src=fc(vokens), tgt=queries).
  (The original's fc hidden width is d; Sura's default is 1024, a config key, as in the design.)
* ELLA (TencentQQGYLab/ELLA, model.py): `time_embedding` (diffusers' TimestepEmbedding after a
  flip_sin_to_cos sinusoid) and `connector` (PerceiverResampler: latents, time_aware_linear,
  proj_in, perceiver_blocks.N.{attn, mlp.c_fc, mlp.c_proj, ln_1, ln_2, ln_ff}, proj_out).
  The released ELLA builds its resampler without `proj_out`; Sura's connector passes output_dim,
  which the original PerceiverResampler supports, to reach the UNet's width.

Weights are random and seeded; the zero-initialised layers (AdaLayerNorm's linears) get random
values too so that parity exercises them. Expected values are computed in float64 from the same
float32 weights and inputs (the timestep sinusoid in float32, as diffusers computes it).

Layout under Tests/ModelsTests/Fixtures/adapters/:
  voken_config.json, voken_weights.safetensors, voken_io.safetensors
  ella_config.json,  ella_weights.safetensors,  ella_io.safetensors
  ella_plain_config.json, ella_plain_weights.safetensors, ella_plain_io.safetensors
    (output_dim null: no proj_out, exactly the released ELLA's structure)

io keys: `hidden` (input), `r_<case>` (loss weights R), `out_<case>`, `grad_hidden_<case>`,
`param_grad_<case>.<name>` for every parameter; ELLA adds `timesteps_<case>`; voken adds
`negative` (mapper of zero vokens, the CFG negative conditioning).

Run: /work/refenv/bin/python Tests/Reference/make_adapter_fixtures_voken_ella.py
"""
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ModelsTests", "Fixtures", "adapters")


# MARK: MiniGPT-5 voken mapper

class VokenMapper(nn.Module):
    def __init__(self, input_dim, fc_hidden_dim, output_dim, num_queries, num_encoder_layers, num_decoder_layers,
                 heads, dim_feedforward):
        super().__init__()
        self.t2i_decoder_prompt = nn.Parameter(torch.randn(1, num_queries, output_dim))
        self.llm_to_t2i_mapping = nn.Transformer(
            d_model=output_dim, nhead=heads, num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers, dim_feedforward=dim_feedforward, dropout=0.0,
            batch_first=True, norm_first=True)
        self.fc = nn.Sequential(nn.Linear(input_dim, fc_hidden_dim), nn.GELU(), nn.Linear(fc_hidden_dim, output_dim))

    def forward(self, vokens):
        mapped = self.fc(vokens)
        queries = self.t2i_decoder_prompt.repeat(vokens.shape[0], 1, 1)
        return self.llm_to_t2i_mapping(src=mapped, tgt=queries)


# MARK: ELLA

class AdaLayerNorm(nn.Module):
    """LayerNorm without affine parameters, scaled and shifted by a timestep-embedding MLP."""

    def __init__(self, width, time_embedding_dim):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(time_embedding_dim, 2 * width)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)

    def forward(self, x, temb):
        shift, scale = self.linear(self.silu(temb)).view(x.shape[0], 1, -1).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class SquaredReLU(nn.Module):
    def forward(self, x):
        return torch.relu(x) ** 2


class PerceiverAttentionBlock(nn.Module):
    def __init__(self, width, heads, time_embedding_dim):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("sq_relu", SquaredReLU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_1 = AdaLayerNorm(width, time_embedding_dim)
        self.ln_2 = AdaLayerNorm(width, time_embedding_dim)
        self.ln_ff = AdaLayerNorm(width, time_embedding_dim)

    def forward(self, x, latents, temb):
        q = self.ln_1(latents, temb)
        kv = torch.cat([q, self.ln_2(x, temb)], dim=1)
        latents = latents + self.attn(q, kv, kv, need_weights=False)[0]
        return latents + self.mlp(self.ln_ff(latents, temb))


class PerceiverResampler(nn.Module):
    def __init__(self, width, layers, heads, num_latents, input_dim, output_dim, time_embedding_dim):
        super().__init__()
        self.latents = nn.Parameter(width ** -0.5 * torch.randn(num_latents, width))
        self.time_aware_linear = nn.Linear(time_embedding_dim, width)
        self.proj_in = nn.Linear(input_dim, width)
        self.perceiver_blocks = nn.Sequential(
            *[PerceiverAttentionBlock(width, heads, time_embedding_dim) for _ in range(layers)])
        self.output_dim = output_dim
        if output_dim is not None:
            self.proj_out = nn.Sequential(nn.Linear(width, output_dim), nn.LayerNorm(output_dim))

    def forward(self, x, temb):
        latents = self.latents.unsqueeze(0).repeat(x.shape[0], 1, 1) + self.time_aware_linear(F.silu(temb))
        x = self.proj_in(x)
        for block in self.perceiver_blocks:
            latents = block(x, latents, temb)
        return self.proj_out(latents) if self.output_dim is not None else latents


class ELLA(nn.Module):
    def __init__(self, width, layers, heads, num_latents, input_dim, output_dim, time_channel, time_embedding_dim):
        super().__init__()
        self.position = Timesteps(time_channel, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(in_channels=time_channel, time_embed_dim=time_embedding_dim,
                                                act_fn="silu")
        self.connector = PerceiverResampler(width, layers, heads, num_latents, input_dim, output_dim,
                                            time_embedding_dim)

    def forward(self, features, timesteps):
        # The sinusoid is computed from float32 timesteps in float32 (diffusers), then cast.
        sinusoid = self.position(timesteps.view(-1)).to(features.dtype).unsqueeze(1)
        sinusoid = sinusoid.expand(features.shape[0], -1, -1)
        return self.connector(features, self.time_embedding(sinusoid))


# MARK: Fixture writing

def randomize(model, generator):
    """Every parameter gets a seeded random value, including those initialised to zero or one."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() == 1 and ("norm" in name or name.endswith("proj_out.1.weight")) and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            elif name.endswith(".linear.weight"):  # AdaLayerNorm: zero at init in the reference
                p.copy_(0.2 * noise / p.shape[1] ** 0.5)
            elif name in ("t2i_decoder_prompt", "connector.latents"):
                p.copy_(noise)
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


def run_case(model, inputs, r, io, case, call):
    """Output, input gradient and every parameter's gradient of sum(out * R)."""
    model.zero_grad()
    hidden = inputs.clone().requires_grad_(True)
    out = call(hidden)
    (out * r).sum().backward()
    io[f"r_{case}"] = r
    io[f"out_{case}"] = out.detach()
    io[f"grad_hidden_{case}"] = hidden.grad
    for pname, p in model.named_parameters():
        io[f"param_grad_{case}.{pname}"] = p.grad.clone()


def voken_fixtures(seed):
    config = dict(input_dim=48, fc_hidden_dim=64, output_dim=32, num_vokens=8, num_queries=6,
                  num_encoder_layers=2, num_decoder_layers=2, heads=4, dim_feedforward=128)
    g = torch.Generator().manual_seed(seed)
    model = VokenMapper(config["input_dim"], config["fc_hidden_dim"], config["output_dim"], config["num_queries"],
                        config["num_encoder_layers"], config["num_decoder_layers"], config["heads"],
                        config["dim_feedforward"])
    randomize(model, g)
    write_config("voken_config.json", config)
    save("voken_weights.safetensors", model.state_dict())
    model = model.double().train()  # dropout is 0; train mode keeps PyTorch off its fused fast path
    batch = 3
    hidden = f64(torch.randn(batch, config["num_vokens"], config["input_dim"], generator=g))
    r = f64(torch.randn(batch, config["num_queries"], config["output_dim"], generator=g))
    io = {"hidden": hidden}
    run_case(model, hidden, r, io, "0", model)
    with torch.no_grad():
        io["negative"] = model(torch.zeros(1, config["num_vokens"], config["input_dim"], dtype=torch.float64))
    save("voken_io.safetensors", io)


def ella_fixtures(prefix, output_dim, seed):
    config = dict(width=32, layers=2, heads=4, num_latents=8, input_dim=48, output_dim=output_dim,
                  time_channel=16, time_embedding_dim=40, act_fn="silu")
    g = torch.Generator().manual_seed(seed)
    model = ELLA(config["width"], config["layers"], config["heads"], config["num_latents"], config["input_dim"],
                 output_dim, config["time_channel"], config["time_embedding_dim"])
    randomize(model, g)
    write_config(f"{prefix}_config.json", config)
    save(f"{prefix}_weights.safetensors", model.state_dict())
    model = model.double().train()
    batch, length = 2, 7
    out_width = output_dim if output_dim is not None else config["width"]
    hidden = f64(torch.randn(batch, length, config["input_dim"], generator=g))
    io = {"hidden": hidden}
    # Two timestep pairs: late and early in the schedule, one fractional.
    for case, timesteps in (("0", [999.0, 10.0]), ("1", [500.5, 0.0])):
        t = torch.tensor(timesteps, dtype=torch.float32)
        r = f64(torch.randn(batch, config["num_latents"], out_width, generator=g))
        run_case(model, hidden, r, io, case, lambda h: model(h, t))
        io[f"timesteps_{case}"] = t
    # One timestep shared by the batch (the reference expands it).
    with torch.no_grad():
        io["out_shared_t"] = model(hidden, torch.tensor([250.0]))
    save(f"{prefix}_io.safetensors", io)


def main():
    os.makedirs(ROOT, exist_ok=True)
    torch.manual_seed(0)
    voken_fixtures(seed=11)
    ella_fixtures("ella", output_dim=24, seed=12)
    ella_fixtures("ella_plain", output_dim=None, seed=13)
    for f in sorted(os.listdir(ROOT)):
        if f.startswith(("voken_", "ella_")):
            print(f"{f}: {os.path.getsize(os.path.join(ROOT, f))} bytes")


if __name__ == "__main__":
    main()
