"""Writes the optimizer, gradient-clipping and learning-rate-schedule fixtures for OptimizerTests.

Run with the reference environment:
    /work/refenv/bin/python Tests/Reference/make_optimizer_fixtures.py
Outputs JSON files under Tests/TensorTests/Fixtures/optim/. Every float is a float32 value
written as the shortest decimal that reads back to the same double, so Swift recovers it exactly.
"""
import json
import math
import os

import torch
from diffusers import optimization as dopt
from transformers import optimization as topt

OUT = os.path.join(os.path.dirname(__file__), "..", "TensorTests", "Fixtures", "optim")


def values(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def make_params(seed, shapes):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g, dtype=torch.float32) for name, shape in shapes}


def run_case(name, kind, settings, shapes, steps, seed, missing_grads=None):
    """Runs `steps` updates; `missing_grads` maps a step index to parameter names given no grad."""
    missing_grads = missing_grads or {}
    init = make_params(seed, shapes)
    params = {n: t.clone().requires_grad_(True) for n, t in init.items()}
    no_decay = set(settings.get("no_decay", []))
    decayed = [params[n] for n, _ in shapes if n not in no_decay]
    exempt = [params[n] for n, _ in shapes if n in no_decay]
    groups = [{"params": decayed}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0})
    lrs = settings["lrs"]
    if kind == "adamw":
        opt = torch.optim.AdamW(groups, lr=lrs[0], betas=tuple(settings["betas"]), eps=settings["eps"],
                                weight_decay=settings["weight_decay"], foreach=False)
    else:
        opt = torch.optim.SGD(groups, lr=lrs[0], momentum=settings["momentum"], dampening=settings["dampening"],
                              nesterov=settings["nesterov"], weight_decay=settings["weight_decay"], foreach=False)
    g = torch.Generator().manual_seed(seed + 1000)
    records = []
    for k in range(steps):
        for group in opt.param_groups:
            group["lr"] = lrs[k]
        grads = {}
        for n, shape in shapes:
            if n in missing_grads.get(k, []):
                params[n].grad = None
                continue
            grad = torch.randn(shape, generator=g, dtype=torch.float32) * 0.5
            params[n].grad = grad.clone()
            grads[n] = values(grad)
        opt.step()
        records.append({"lr": lrs[k], "grads": grads, "params_after": {n: values(p) for n, p in params.items()}})
    state = {}
    for n, p in params.items():
        s = opt.state.get(p, {})
        for key, t in s.items():
            if t is None:
                continue
            state[f"{key}.{n}"] = values(t) if t.dim() > 0 else [float(t.item())]
    return {
        "name": name, "optimizer": kind, "settings": settings,
        "params": [{"name": n, "shape": list(shape), "data": values(init[n])} for n, shape in shapes],
        "steps": records, "final_state": state,
    }


def optimizer_cases():
    shapes = [("w", [3, 4]), ("b", [5]), ("big", [40])]
    lrs = [1e-3, 2e-3, 5e-4, 1e-3, 3e-3, 1e-3]
    cases = [
        run_case("adamw_default", "adamw",
                 {"lrs": lrs, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2, "no_decay": ["b"]},
                 shapes, 6, seed=1, missing_grads={2: ["b"]}),
        # beta1 ≤ 0.5 takes torch's other lerp branch; a large eps and decay exercise every term.
        run_case("adamw_low_beta", "adamw",
                 {"lrs": [1e-2] * 5, "betas": [0.3, 0.99], "eps": 1e-3, "weight_decay": 0.1, "no_decay": []},
                 shapes, 5, seed=2),
        run_case("sgd_plain", "sgd",
                 {"lrs": [0.1, 0.05, 0.1, 0.2], "momentum": 0.0, "dampening": 0.0, "nesterov": False,
                  "weight_decay": 0.0}, shapes, 4, seed=3),
        run_case("sgd_momentum", "sgd",
                 {"lrs": [0.1] * 5, "momentum": 0.9, "dampening": 0.1, "nesterov": False, "weight_decay": 0.0},
                 shapes, 5, seed=4, missing_grads={0: ["b"]}),
        run_case("sgd_nesterov", "sgd",
                 {"lrs": [0.05] * 5, "momentum": 0.8, "dampening": 0.0, "nesterov": True, "weight_decay": 0.0},
                 shapes, 5, seed=5),
        run_case("sgd_weight_decay", "sgd",
                 {"lrs": [0.1] * 4, "momentum": 0.5, "dampening": 0.0, "nesterov": False, "weight_decay": 0.01,
                  "no_decay": ["b"]}, shapes, 4, seed=6),
    ]
    return {"cases": cases}


def clip_cases():
    g = torch.Generator().manual_seed(11)
    shapes = [[3, 4], [5], [40]]
    cases = []
    for max_norm in [0.5, 2.0, 100.0]:
        grads = [torch.randn(s, generator=g, dtype=torch.float32) for s in shapes]
        params = [torch.zeros(s, requires_grad=True) for s in shapes]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        cases.append({
            "max_norm": max_norm, "shapes": shapes,
            "grads": [values(x) for x in grads],
            "total_norm": float(total.item()),
            "clipped": [values(p.grad) for p in params],
        })
    return {"cases": cases}


def schedule_cases():
    base = 1.0
    steps = [0, 1, 5, 9, 10, 11, 37, 50, 99, 100, 101, 150]
    p = torch.nn.Parameter(torch.zeros(1))

    def trace(make):
        # LambdaLR multiplies the base rate by its lambda at the number of scheduler steps taken.
        sched = make(torch.optim.SGD([p], lr=base))
        return [float(sched.lr_lambdas[0](s)) * base for s in steps]

    configs = [
        ({"name": "constant"}, lambda o: dopt.get_constant_schedule(o)),
        ({"name": "constant_with_warmup", "warmup_steps": 10},
         lambda o: dopt.get_constant_schedule_with_warmup(o, 10)),
        ({"name": "cosine", "warmup_steps": 10, "total_steps": 100},
         lambda o: dopt.get_cosine_schedule_with_warmup(o, 10, 100)),
        ({"name": "cosine", "warmup_steps": 0, "total_steps": 100, "num_cycles": 1.5},
         lambda o: dopt.get_cosine_schedule_with_warmup(o, 0, 100, num_cycles=1.5)),
        ({"name": "cosine", "warmup_steps": 10, "total_steps": 100, "min_lr_ratio": 0.1},
         lambda o: topt.get_cosine_with_min_lr_schedule_with_warmup(o, 10, 100, min_lr_rate=0.1)),
        ({"name": "linear", "warmup_steps": 10, "total_steps": 100},
         lambda o: dopt.get_linear_schedule_with_warmup(o, 10, 100)),
        ({"name": "linear", "warmup_steps": 5, "total_steps": 100, "min_lr_ratio": 0.2},
         lambda o: dopt.get_linear_schedule_with_warmup(o, 5, 100, f_min=0.2)),
    ]
    return {"steps": steps, "cases": [{"config": c, "values": trace(m)} for c, m in configs]}


def main():
    os.makedirs(OUT, exist_ok=True)
    for file, data in [("optimizers.json", optimizer_cases()), ("clip_grad_norm.json", clip_cases()),
                       ("schedules.json", schedule_cases())]:
        with open(os.path.join(OUT, file), "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.write("\n")
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
