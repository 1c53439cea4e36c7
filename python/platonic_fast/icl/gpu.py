"""Findings 1 and 2 at a larger size on one GPU in about 8 minutes (issue 21, item 8).

Sizes: d = 10, k = 1, 20 points, GPT-2 with 6 layers × 128 dimensions and 4 heads, "xy" tokens,
batch 64, Adam at 1e-3 with a linear warm-up and a cosine decay to 1e-4, a curriculum from d = 3
and 6 points (+1 and +2 every 300 steps). Six models are trained at once in one process, round
robin on the same device: ``dense``, ``sparse`` and ``dense+sparse``, two seeds each (seeds as the
``fair`` preset: the model's seed and seed + 100). CUDA: bfloat16 autocast and ``torch.compile``.
Every batch holds the full 20 points and the curriculum's shorter sequences are its first n_eff
points with the loss over those alone: the read-out is causal, so the later points change nothing
before them, and the shapes stay fixed (one compile per model, no recompiles as lengths grow).
One warm-up step per model (the compiles) runs before the calibration clock starts; the budget
counts from the start.

Throughput calibration
    The first ``calibrate_s`` seconds (60 by default) train as usual inside the warm-up, whose
    learning rates do not depend on the run's length; the measured rate then fixes the number of
    steps so that training ends ``reserve_s`` before ``budget_s`` (the rest is for evaluation),
    capped at ``max_steps`` and never below the steps already taken. The cosine decay is laid out
    over the steps chosen.
Output (``out``)
    ``icl_gpu.json``: sizes, the calibration (rate, chosen steps), every model's loss history and
    the gate of each sparse specialist and finding 1's window NSE for every model against least
    squares, the Lasso and the Bayes posterior mean; ``<run>/weights.safetensors`` (the weights
    alone, readable by :func:`.train.load_model`).
``dry_run``
    Tiny sizes on the CPU, a few steps, no compile, a one-second calibration: checks the whole path
    (CI runs it).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from . import evaluate as ev
from .model import InContextModel, ModelConfig, autocast
from .tasks import parse_mixture
from .train import Curriculum, TrainConfig, resolve_device, save_weights

MODELS = (("dense", "dense", 0), ("sparse", "sparse(k=1)", 1), ("dense+sparse", "0.5*dense + 0.5*sparse(k=1)", 2))
GPU_MODEL = ModelConfig(d=10, n_points=20, n_layer=6, n_embd=128, n_head=4, tokens="xy")
GPU_TRAIN = TrainConfig(mixture="dense", steps=20_000, batch_size=64, lr=1e-3, warmup=2000, schedule="cosine",
                        curriculum=Curriculum(d_start=3, n_start=6, every=300, d_inc=1, n_inc=2), log_every=100)
DRY_MODEL = ModelConfig(d=4, n_points=6, n_layer=1, n_embd=16, n_head=2, tokens="xy")
DRY_TRAIN = replace(GPU_TRAIN, steps=12, warmup=6, batch_size=8, log_every=2,
                    curriculum=Curriculum(d_start=2, n_start=3, every=2))


def plan_steps(rate: float, elapsed: float, done: int, *, budget_s: float, reserve_s: float, max_steps: int) -> int:
    """Total steps that end training ``reserve_s`` before ``budget_s`` at ``rate`` steps per second."""
    if not rate > 0:
        raise ValueError(f"throughput must be positive, got {rate!r}")
    left = max(0.0, budget_s - reserve_s - elapsed)
    return int(max(done, min(max_steps, done + math.floor(rate * left))))


def run(out, **kwargs) -> dict:
    """Train the six models, evaluate, write ``out`` (see the module's docstring); torch's thread
    count is put back afterwards (the dry run sets one thread)."""
    threads = torch.get_num_threads()
    try:
        return _run(out, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _run(out, *, budget_s: float = 480.0, calibrate_s: float = 60.0, reserve_s: float = 90.0, seeds: int = 2,
        max_steps: int | None = None, dry_run: bool = False, device=None, eval_count: int = 512, compile_: bool = True,
        log=print) -> dict:
    out = Path(out)
    model_cfg, base = (DRY_MODEL, DRY_TRAIN) if dry_run else (GPU_MODEL, GPU_TRAIN)
    max_steps = max_steps or base.steps
    dev = torch.device("cpu") if dry_run else resolve_device(device)
    if dry_run:
        calibrate_s, eval_count = min(calibrate_s, 1.0), min(eval_count, 16)
        torch.set_num_threads(1)   # a shared CI machine: one thread is fastest for these sizes
    runs = []
    for name, mixture, seed in MODELS:
        for r in range(seeds):
            cfg = replace(base, mixture=mixture, seed=seed + 100 * r)
            cfg.check(model_cfg)
            model = InContextModel(model_cfg, seed=cfg.seed).to(dev)
            step_fn = torch.compile(model, dynamic=False) if dev.type == "cuda" and compile_ else model
            runs.append({"name": name if r == 0 else f"{name}@{r}", "cfg": cfg, "model": model, "fwd": step_fn,
                         "opt": torch.optim.Adam(model.parameters(), lr=cfg.lr),
                         "gen": torch.Generator().manual_seed(cfg.seed + 1), "mix": parse_mixture(mixture),
                         "history": [], "window": []})
    log(f"icl gpu: {len(runs)} models ({model_cfg.n_layer}x{model_cfg.n_embd}, d={model_cfg.d}, "
        f"{model_cfg.n_points} points) on {dev}, budget {budget_s:.0f} s, calibration {calibrate_s:.0f} s")
    if dev.type == "cuda":
        from torch import _dynamo

        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 4 * len(runs))
    t_start = time.perf_counter()
    steps, planned, rate, step = max_steps, None, None, 0
    for run_ in runs:              # step 0: the compiles (timed apart from the calibration)
        _one_step(run_, step, steps, model_cfg, dev)
    step = 1
    _sync(dev)
    t0 = time.perf_counter()
    compile_s = t0 - t_start
    while step < steps:
        for run_ in runs:
            _one_step(run_, step, steps, model_cfg, dev)
        step += 1
        if planned is None:
            elapsed = time.perf_counter() - t0
            if elapsed >= calibrate_s or step >= base.warmup or step >= steps:
                _sync(dev)
                elapsed = time.perf_counter() - t0
                rate = (step - 1) / elapsed
                elapsed = time.perf_counter() - t_start
                planned = steps = plan_steps(rate, elapsed, step, budget_s=budget_s, reserve_s=reserve_s,
                                             max_steps=max_steps)
                log(f"first step (compiles) {compile_s:.1f} s; calibration: {step - 1} steps in "
                    f"{elapsed - compile_s:.1f} s ({rate:.1f} steps/s for {len(runs)} models): "
                    f"training to step {steps}")
        if step % 1000 == 0:
            log(f"step {step}/{steps}: " + ", ".join(f"{r['name']} {r['history'][-1][1]:.3f}" for r in runs
                                                     if r["history"]))
    _sync(dev)
    train_s = time.perf_counter() - t_start
    result = {"device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev), "dry_run": dry_run,
              "model": model_cfg.as_dict(), "train": {**base.as_dict(), "steps": steps},
              "calibration": {"seconds": calibrate_s, "rate": rate, "planned_steps": planned,
                              "compile_seconds": compile_s, "compiled": dev.type == "cuda" and compile_},
              "train_seconds": train_s, "models": {}, "gates": {}, "finding1": {}}
    for run_ in runs:
        cfg = replace(run_["cfg"], steps=steps)
        save_weights(out / run_["name"] / "weights.safetensors", run_["model"], model_cfg, cfg, steps,
                     run_["history"])
        result["models"][run_["name"]] = {"mixture": cfg.mixture, "seed": cfg.seed, "history": run_["history"]}
    t1 = time.perf_counter()
    result["finding1"] = _finding1(runs, model_cfg, eval_count)
    result["eval_seconds"] = time.perf_counter() - t1
    out.mkdir(parents=True, exist_ok=True)
    (out / "icl_gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    log(f"trained {steps} steps in {train_s:.0f} s, evaluated in {result['eval_seconds']:.0f} s; wrote "
        f"{out / 'icl_gpu.json'}")
    for task, t in result["finding1"].items():
        log(f"  {task}: " + ", ".join(f"{m} {v['mean']:.3f}" for m, v in t["window_nse"].items()))
    return result


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _one_step(run_, step, steps, model_cfg, dev):
    cfg = replace(run_["cfg"], steps=steps)
    d_eff, n_eff = cfg.curriculum.at(step, model_cfg.d, model_cfg.n_points)
    # full-length sequences (fixed shapes); the loss reads the curriculum's first n_eff points only
    xs, ys, _ = run_["mix"].sample(cfg.batch_size, model_cfg.n_points, model_cfg.d, run_["gen"], d_eff=d_eff)
    xs, ys = xs.to(dev, non_blocking=True), ys.to(dev, non_blocking=True)
    for g in run_["opt"].param_groups:
        g["lr"] = cfg.lr_at(step)
    with autocast(dev):
        pred = run_["fwd"](xs, ys)
    loss = (pred[:, :n_eff].float() - ys[:, :n_eff]).pow(2).mean()
    run_["opt"].zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run_["model"].parameters(), cfg.clip)
    run_["opt"].step()
    run_["window"].append(loss.detach())
    if (step + 1) % cfg.log_every == 0:
        run_["history"].append([step + 1, float(torch.stack(run_["window"]).mean())])
        run_["window"] = []


def _finding1(runs, model_cfg, count):
    """Window NSE (1..d−1 examples) of every model on dense and sparse(k=1) tasks, beside least
    squares, the Lasso and the Bayes posterior mean; the gate's margin for the sparse specialists."""
    win = list(range(1, min(model_cfg.d, model_cfg.n_points)))
    out = {}
    for task in ("dense", "sparse(k=1)"):
        xs, ys = ev.eval_sequences(task, model_cfg.d, model_cfg.n_points, count=count, seed=1)
        preds = {r["name"]: ev.predict(r["model"].eval(), xs, ys).double() for r in runs}
        base = ev.baselines(xs, ys, names=("least_squares", "lasso", "bayes_sparse"), sparse_k=1)
        preds.update({k: v for k, v in base.items() if isinstance(v, torch.Tensor) and "[" not in k})
        idx = ev.bootstrap_indices(count)
        err = {m: ev.squared_errors(p, ys)[:, win].mean(1) for m, p in preds.items()}
        t = {"window_examples": win, "count": count, "window_nse": {m: ev.summary(e, idx=idx) for m, e in err.items()}}
        if task.startswith("sparse"):
            gap = t["window_nse"]["least_squares"]["mean"] - t["window_nse"]["lasso"]["mean"]
            ls = t["window_nse"]["least_squares"]["mean"]
            t["gate"] = {r["name"]: {"gain": ls - t["window_nse"][r["name"]]["mean"], "required": 0.5 * gap,
                                     "passed": ls - t["window_nse"][r["name"]]["mean"] >= 0.5 * gap}
                         for r in runs if r["name"].startswith("sparse")}
        out[task] = t
    return out


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m platonic_fast.icl.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 480)")
    p.add_argument("--calibrate", type=float, default=60.0, help="throughput calibration seconds (default 60)")
    p.add_argument("--reserve", type=float, default=90.0, help="seconds kept for evaluation (default 90)")
    p.add_argument("--max-steps", type=int, default=None, help="cap on the steps (default 20,000)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the path")
    p.add_argument("--device", default=None)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    a = p.parse_args(argv)
    if a.budget <= a.reserve or a.calibrate <= 0:
        p.error("--budget must exceed --reserve, and --calibrate must be positive")
    if not a.dry_run and a.device in (None, "auto", "cuda") and not torch.cuda.is_available():
        p.error("no CUDA device here; use --dry-run on a CPU")
    run(a.out, budget_s=a.budget, calibrate_s=a.calibrate, reserve_s=a.reserve, max_steps=a.max_steps,
        dry_run=a.dry_run, device=a.device, compile_=not a.no_compile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
