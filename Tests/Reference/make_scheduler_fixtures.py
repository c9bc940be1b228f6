#!/usr/bin/env python3
"""Writes the scheduler parity fixtures for Tests/ModelsTests/SchedulerTests.swift.

Runs diffusers' DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler and
DPMSolverMultistepScheduler on a fixed 2x3x4x4 sample with a deterministic stand-in model

    model_output = 0.3 * model_input + 0.1 * t / 1000

and records, per configuration: the diffusers config (exactly as scheduler_config.json holds
it), the timesteps, the sigmas, init_noise_sigma, and the previous sample and predicted x0 at a
few steps of the trajectory. Stochastic steps (DDPM, DDIM with eta > 0) use injected noise

    noise_k[i] = sin(0.37 * i + 1.1 * k + 0.5)      (float64, then float32; k = step index)

so the Swift test can rebuild it without storing it. Also written: beta schedules, timestep
lists for many step counts, add_noise / get_velocity / compute_snr outputs and min-SNR weights.

Usage: /work/refenv/bin/python Tests/Reference/make_scheduler_fixtures.py
"""
import json
import math
from pathlib import Path

import numpy as np
import torch
import diffusers
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerDiscreteScheduler)
import diffusers.schedulers.scheduling_ddpm as ddpm_module
from diffusers.training_utils import compute_snr

OUT = Path(__file__).resolve().parents[1] / "ModelsTests" / "Fixtures" / "schedulers"
SHAPE = (2, 3, 4, 4)
COUNT = int(np.prod(SHAPE))
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)

generator = torch.Generator().manual_seed(1234)
SAMPLE = torch.randn(SHAPE, generator=generator, dtype=torch.float32)
NOISE = torch.randn(SHAPE, generator=generator, dtype=torch.float32)


def sin_noise(k):
    values = np.sin(0.37 * np.arange(COUNT, dtype=np.float64) + 1.1 * k + 0.5).astype(np.float32)
    return torch.from_numpy(values).reshape(SHAPE)


def model(x, t):
    return 0.3 * x + 0.1 * float(t) / 1000.0


def floats(t):
    """float32 values written with 9 significant digits (enough to round-trip float32)."""
    arr = np.asarray(t.detach().numpy() if isinstance(t, torch.Tensor) else t, dtype=np.float32).reshape(-1)
    return [float("%.9g" % v) for v in arr]


def config_dict(scheduler):
    return json.loads(scheduler.to_json_string().replace("-Infinity", "null"))


def recorded_steps(n):
    return sorted({0, 1, n // 2, n - 1} & set(range(n)))


# The step index of the current DDPM step, read by the injected noise source.
CURRENT_STEP = [0]


def injected_randn(shape, generator=None, device=None, dtype=None, layout=None):
    assert tuple(shape) == SHAPE
    return sin_noise(CURRENT_STEP[0])


ddpm_module.randn_tensor = injected_randn


def run(cls, config, steps, name, eta=0.0, use_clipped=False, learned_variance=False):
    scheduler = cls(**config)
    scheduler.set_timesteps(steps)
    x = SAMPLE * scheduler.init_noise_sigma
    keep = recorded_steps(len(scheduler.timesteps))
    record = dict(name=name, config=config_dict(scheduler), steps=steps,
                  timesteps=[float(t) for t in scheduler.timesteps],
                  init_noise_sigma=float(scheduler.init_noise_sigma),
                  recorded_steps=keep, prev_samples=[], pred_original_samples=[])
    if hasattr(scheduler, "sigmas") and cls is not DDPMScheduler and cls is not DDIMScheduler:
        record["sigmas"] = floats(scheduler.sigmas)
    if learned_variance:
        record["learned_variance"] = True
    if cls is DDIMScheduler:
        record["eta"] = eta
        record["use_clipped_model_output"] = use_clipped
    for i, t in enumerate(scheduler.timesteps):
        CURRENT_STEP[0] = i
        model_input = scheduler.scale_model_input(x, t)
        output = model(model_input, t)
        if learned_variance:
            # The second half of the channels is the variance output v in [-1, 1]-ish.
            output = torch.cat([output, 0.2 * model_input - 0.1], dim=1)
        if cls is DDIMScheduler:
            result = scheduler.step(output, t, x, eta=eta, use_clipped_model_output=use_clipped,
                                    variance_noise=sin_noise(i) if eta > 0 else None)
            pred = result.pred_original_sample
        elif cls is DPMSolverMultistepScheduler:
            result = scheduler.step(output, t, x)
            pred = scheduler.model_outputs[-1]
        else:
            result = scheduler.step(output, t, x)
            pred = result.pred_original_sample
        x = result.prev_sample
        if i in keep:
            record["prev_samples"].append(floats(x))
            record["pred_original_samples"].append(floats(pred))
    return record


def base_runs(cls, extra_config):
    runs = []
    for prediction in ["epsilon", "v_prediction"]:
        for spacing in ["leading", "trailing", "linspace"]:
            for steps in [10, 25]:
                config = dict(SD, prediction_type=prediction, timestep_spacing=spacing,
                              steps_offset=1 if spacing == "leading" else 0, **extra_config)
                runs.append(run(cls, config, steps, f"{prediction}-{spacing}-{steps}"))
    return runs


def trajectories():
    zero_snr = dict(SD, prediction_type="v_prediction", timestep_spacing="trailing", rescale_betas_zero_snr=True)
    cosine = dict(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")

    ddpm = base_runs(DDPMScheduler, {})
    ddpm += [
        run(DDPMScheduler, dict(SD, prediction_type="sample", clip_sample=False), 10, "sample-noclip"),
        run(DDPMScheduler, dict(prediction_type="epsilon", variance_type="fixed_small_log"), 10, "linear-fixed_small_log"),
        run(DDPMScheduler, dict(prediction_type="epsilon", variance_type="fixed_large"), 10, "linear-fixed_large"),
        run(DDPMScheduler, dict(SD, prediction_type="epsilon", variance_type="learned_range"), 10, "learned_range",
            learned_variance=True),
        run(DDPMScheduler, dict(zero_snr, clip_sample=False), 10, "zero-snr"),
        run(DDPMScheduler, cosine, 10, "cosine"),
        run(DDPMScheduler, dict(SD, prediction_type="epsilon", clip_sample_range=0.5), 25, "clip-0.5"),
    ]

    ddim = base_runs(DDIMScheduler, dict(clip_sample=False, set_alpha_to_one=False))
    clip_v = dict(SD, prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=True, clip_sample_range=0.5)
    ddim += [
        run(DDIMScheduler, clip_v, 25, "v-clip-diffusers-default", use_clipped=False),
        run(DDIMScheduler, clip_v, 25, "v-clip-recomputed-noise", use_clipped=True),
        run(DDIMScheduler, dict(SD, prediction_type="epsilon", clip_sample=True), 10, "eps-clip-recomputed-noise", use_clipped=True),
        run(DDIMScheduler, dict(SD, prediction_type="epsilon", clip_sample=False), 10, "eta-0.5", eta=0.5),
        run(DDIMScheduler, dict(SD, prediction_type="sample", clip_sample=False), 10, "sample"),
        run(DDIMScheduler, dict(zero_snr, clip_sample=False), 25, "zero-snr"),
        run(DDIMScheduler, dict(cosine, clip_sample=False, set_alpha_to_one=True), 10, "cosine"),
    ]

    euler = base_runs(EulerDiscreteScheduler, {})
    euler += [
        run(EulerDiscreteScheduler, dict(SD, use_karras_sigmas=True), 25, "karras"),
        run(EulerDiscreteScheduler, dict(SD, use_karras_sigmas=True, prediction_type="v_prediction"), 10, "karras-v"),
        run(EulerDiscreteScheduler, dict(SD, interpolation_type="log_linear"), 10, "log_linear"),
        run(EulerDiscreteScheduler, dict(SD, final_sigmas_type="sigma_min"), 10, "sigma_min"),
        run(EulerDiscreteScheduler, zero_snr, 25, "zero-snr"),
        run(EulerDiscreteScheduler, dict(SD, prediction_type="sample"), 10, "sample"),
    ]

    dpm = base_runs(DPMSolverMultistepScheduler, {})
    dpm += [
        run(DPMSolverMultistepScheduler, dict(SD, use_karras_sigmas=True), 25, "karras"),
        # (cosine + Karras truncates timesteps to repeated integers, and diffusers then starts at
        # the second copy of the first timestep and runs off the end; not recorded.)
        run(DPMSolverMultistepScheduler, cosine, 10, "cosine"),
        run(DPMSolverMultistepScheduler, dict(SD, solver_order=1), 10, "order1"),
        run(DPMSolverMultistepScheduler, dict(SD, solver_order=3), 25, "order3"),
        run(DPMSolverMultistepScheduler, dict(SD, solver_type="heun"), 25, "heun"),
        run(DPMSolverMultistepScheduler, dict(SD, lower_order_final=False), 10, "no-lower-order-final"),
        run(DPMSolverMultistepScheduler, dict(SD, final_sigmas_type="sigma_min"), 10, "sigma_min-lower-order"),
        run(DPMSolverMultistepScheduler, dict(SD, final_sigmas_type="sigma_min", lower_order_final=False), 10,
            "sigma_min-second-order-final"),
        run(DPMSolverMultistepScheduler, dict(SD, euler_at_final=True, final_sigmas_type="sigma_min"), 25, "euler_at_final"),
        run(DPMSolverMultistepScheduler, dict(SD, lambda_min_clipped=-5.1), 25, "lambda_min_clipped"),
        run(DPMSolverMultistepScheduler, zero_snr, 25, "zero-snr"),
        run(DPMSolverMultistepScheduler, dict(SD, prediction_type="sample"), 10, "sample"),
    ]
    return dict(ddpm=ddpm, ddim=ddim, euler=euler, dpmsolver=dpm)


def schedules():
    configs = {
        "linear-default": dict(),
        "scaled_linear-sd": dict(SD),
        "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2"),
        "scaled_linear-zero-snr": dict(SD, rescale_betas_zero_snr=True),
        "linear-100": dict(num_train_timesteps=100, beta_start=0.001, beta_end=0.05),
    }
    out = []
    for name, config in configs.items():
        scheduler = DDPMScheduler(**config)
        out.append(dict(name=name, config=config_dict(scheduler), betas=floats(scheduler.betas),
                        alphas_cumprod=floats(scheduler.alphas_cumprod)))

    timestep_lists = []
    counts = [1, 3, 7, 10, 25, 50, 100, 333]
    for cls in [DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler]:
        for spacing in ["leading", "trailing", "linspace"]:
            for offset in [0, 1]:
                for n in counts + ([1000] if cls in (DDPMScheduler, DDIMScheduler) and offset == 0 else []):
                    scheduler = cls(**SD, timestep_spacing=spacing, steps_offset=offset)
                    scheduler.set_timesteps(n)
                    values = [float(t) for t in scheduler.timesteps]
                    if len(values) != n or min(values) < 0:
                        continue  # diffusers' own off-by-one cases; tested separately in Swift
                    timestep_lists.append(dict(scheduler=cls.__name__, timestep_spacing=spacing, steps_offset=offset,
                                               steps=n, timesteps=values))
    return dict(schedules=out, timestep_lists=timestep_lists)


def training():
    cases = []
    for name, config, timesteps in [
        ("sd", dict(SD), [0, 999]),
        ("sd-mid", dict(SD), [500, 17]),
        ("zero-snr", dict(SD, rescale_betas_zero_snr=True), [999, 0]),
        ("cosine", dict(beta_schedule="squaredcos_cap_v2"), [250, 998]),
    ]:
        scheduler = DDPMScheduler(**config)
        t = torch.tensor(timesteps, dtype=torch.int64)
        snr_t = torch.tensor([0, 1, 10, 100, 500, 999], dtype=torch.int64)
        snr = compute_snr(scheduler, snr_t)
        weights = {}
        for gamma in [1.0, 5.0]:
            base = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
            # As diffusers' train_text_to_image.py, with Sura's documented limit at SNR = 0.
            eps = torch.where(snr == 0, torch.ones_like(snr), base / snr)
            weights[f"epsilon-{gamma:g}"] = floats(eps)
            weights[f"v_prediction-{gamma:g}"] = floats(base / (snr + 1))
            weights[f"sample-{gamma:g}"] = floats(base)
        cases.append(dict(name=name, config=config_dict(scheduler), timesteps=timesteps,
                          add_noise=floats(scheduler.add_noise(SAMPLE, NOISE, t)),
                          velocity=floats(scheduler.get_velocity(SAMPLE, NOISE, t)),
                          snr_timesteps=snr_t.tolist(), snr=floats(snr), min_snr_weights=weights))
    schedule_noise = []
    for cls, config in [(EulerDiscreteScheduler, dict(SD)), (EulerDiscreteScheduler, dict(SD, use_karras_sigmas=True)),
                        (DPMSolverMultistepScheduler, dict(SD))]:
        scheduler = cls(**config)
        scheduler.set_timesteps(10)
        t = scheduler.timesteps[[0, 6]]
        schedule_noise.append(dict(config=config_dict(scheduler), steps=10, step_indices=[0, 6],
                                   timesteps=[float(v) for v in t],
                                   add_noise=floats(scheduler.add_noise(SAMPLE, NOISE, t))))
    return dict(cases=cases, schedule_noise=schedule_noise)


def write(name, payload):
    payload = dict(diffusers_version=diffusers.__version__, torch_version=torch.__version__,
                   shape=list(SHAPE), sample=floats(SAMPLE), noise=floats(NOISE), **payload)
    path = OUT / name
    path.write_text(json.dumps(payload, separators=(",", ":")) + "\n")
    print(f"{path.relative_to(OUT.parents[2])}: {path.stat().st_size / 1024:.0f} KiB")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, runs in trajectories().items():
        write(f"{name}.json", dict(runs=runs))
    write("schedules.json", schedules())
    write("training.json", training())


if __name__ == "__main__":
    main()
