#!/usr/bin/env python3
"""Writes the diffusion-model parity fixtures for Tests/ModelsTests (UNetTests, AutoencoderKLTests).

Small random-weight diffusers models are built from configs, saved with `save_pretrained`
(config.json + diffusion_pytorch_model.safetensors, weights stored as float16 to keep each file
under 2 MB), and run on fixed inputs. Expected outputs are computed in float64 from the very
same float16-representable weights, so Sura's float32 results are compared against values whose
own rounding error is negligible.

Layout under Tests/ModelsTests/Fixtures/diffusion/:
  unet_small/              UNet (32, 64), 1 layer, cross-attention 32, 8 heads, conv projections
  unet_small_io.safetensors
  unet_linear/             UNet (16, 32, 32), 2 layers, 2 transformer layers, linear projections,
                           per-block heads, flip_sin_to_cos False, freq_shift 1, 3 channels
  unet_linear_io.safetensors
  vae/                     AutoencoderKL (32, 64), latent 4, 8 groups
  vae_io.safetensors

Run: /work/refenv/bin/python Tests/Reference/make_diffusion_fixtures.py
"""
import os
import shutil

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "ModelsTests", "Fixtures", "diffusion")


def randomize(model, generator):
    """Perturbs every parameter so that no weight keeps a trivial value (norm scales 1, biases 0),
    then rounds to float16 so that the saved float16 file holds exactly the weights used here."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() == 1 and name.endswith(".weight"):  # GroupNorm / LayerNorm scales
                p.copy_(1 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                p.add_(0.02 * noise)
            p.copy_(p.half().float())


def save_model(model, folder):
    path = os.path.join(ROOT, folder)
    if os.path.exists(path):
        shutil.rmtree(path)
    model.half().save_pretrained(path, safe_serialization=True)
    model.float()
    size = os.path.getsize(os.path.join(path, "diffusion_pytorch_model.safetensors"))
    assert size < 2_000_000, f"{folder} weights are {size} bytes"


def f32(t):
    """Inputs are float32 values (Sura's precision), carried in float64 for the reference."""
    return t.float().double()


# Parameters whose gradients are checked too (training the base UNet needs them), by fixture.
PARAM_GRADS = {
    "unet_small": ["conv_in.weight", "time_embedding.linear_1.weight",
                   "down_blocks.0.resnets.0.time_emb_proj.weight",
                   "down_blocks.0.attentions.0.proj_in.weight",
                   "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                   "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                   "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight",
                   "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
                   "down_blocks.0.attentions.0.transformer_blocks.0.norm2.weight",
                   "mid_block.attentions.0.proj_out.bias", "up_blocks.1.attentions.1.norm.weight",
                   "conv_norm_out.bias", "conv_out.weight"],
    "unet_linear": ["down_blocks.1.attentions.0.proj_in.weight", "up_blocks.2.attentions.2.proj_out.weight",
                    "up_blocks.1.attentions.0.transformer_blocks.1.attn2.to_out.0.weight"],
}


def unet_case(name, config, batch, seq_lens, timesteps, seed, mask_len=None):
    g = torch.Generator().manual_seed(seed)
    model = UNet2DConditionModel(**config)
    randomize(model, g)
    save_model(model, name)
    model = model.double().eval()

    c, s = config["in_channels"], config["sample_size"]
    width = config["cross_attention_dim"]
    io = {}
    sample = f32(torch.randn(batch, c, s, s, generator=g))
    t = torch.tensor(timesteps, dtype=torch.float64)
    io["sample"] = sample
    io["timesteps"] = t
    for i, length in enumerate(seq_lens):
        ehs = f32(torch.randn(batch, length, width, generator=g))
        weight = f32(torch.randn(batch, config["out_channels"], s, s, generator=g))
        x = sample.clone().requires_grad_(True)
        e = ehs.clone().requires_grad_(True)
        out = model(x, t.float(), encoder_hidden_states=e).sample
        (out * weight).sum().backward()
        io[f"ehs_{i}"] = ehs
        io[f"w_{i}"] = weight
        io[f"out_{i}"] = out.detach()
        io[f"grad_sample_{i}"] = x.grad
        io[f"grad_ehs_{i}"] = e.grad
        if i == 0:
            params = dict(model.named_parameters())
            for pname in PARAM_GRADS[name]:
                io[f"param_grad.{pname}"] = params[pname].grad.clone()
        model.zero_grad()
    if mask_len is not None:
        ehs = io["ehs_0"]
        mask = torch.ones(batch, ehs.shape[1], dtype=torch.float64)
        mask[0, mask_len:] = 0
        mask[-1, : max(1, mask_len // 2)] = 0
        with torch.no_grad():
            out = model(sample, t.float(), encoder_hidden_states=ehs, encoder_attention_mask=mask).sample
        io["mask"] = mask
        io["out_masked"] = out
    # A single timestep for the whole batch, given as a Python float.
    with torch.no_grad():
        io["out_shared_t"] = model(sample, float(timesteps[0]), encoder_hidden_states=io["ehs_0"]).sample
    save_file({k: v.float().contiguous() for k, v in io.items()}, os.path.join(ROOT, f"{name}_io.safetensors"))


def vae_case(seed):
    g = torch.Generator().manual_seed(seed)
    config = dict(in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4, norm_num_groups=8,
                  layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16, scaling_factor=0.5)
    model = AutoencoderKL(**config)
    randomize(model, g)
    save_model(model, "vae")
    model = model.double().eval()
    x = f32(torch.randn(2, 3, 16, 16, generator=g))
    z = f32(torch.randn(2, 4, 8, 8, generator=g))
    with torch.no_grad():
        dist = model.encode(x).latent_dist
        decoded = model.decode(z).sample
    io = {"x": x, "z": z, "mean": dist.mean, "logvar": dist.logvar, "decoded": decoded}
    save_file({k: v.float().contiguous() for k, v in io.items()}, os.path.join(ROOT, "vae_io.safetensors"))


def main():
    os.makedirs(ROOT, exist_ok=True)
    torch.manual_seed(0)
    unet_case("unet_small", dict(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ), batch=2, seq_lens=(7, 77), timesteps=[3.0, 750.5], seed=1, mask_len=4)
    unet_case("unet_linear", dict(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32), layers_per_block=2,
        cross_attention_dim=24, attention_head_dim=(2, 4, 4), norm_num_groups=4, transformer_layers_per_block=2,
        use_linear_projection=True, flip_sin_to_cos=False, freq_shift=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ), batch=2, seq_lens=(5,), timesteps=[999.0, 0.0], seed=2)
    vae_case(seed=3)
    for root, _, files in os.walk(ROOT):
        for f in sorted(files):
            p = os.path.join(root, f)
            print(f"{os.path.relpath(p, ROOT)}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
