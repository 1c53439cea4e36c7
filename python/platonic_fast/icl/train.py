"""Pretraining: Adam on fresh sequences every step, an optional curriculum, resumable checkpoints.

Loss
    The mean squared error of the predictions at every x position of every sequence of the batch
    (y has unit variance, so a loss of 1 is the zero predictor's).
Randomness
    The model's initialisation comes from ``seed``; the training sequences from a separate
    ``torch.Generator`` seeded with ``seed + 1`` that lives on the CPU whatever the device, so the
    data stream is the same on every machine. Nothing else draws random numbers (no dropout).
Curriculum (optional, as Garg et al. 2022)
    Every ``every`` steps the active input dimension grows by ``d_inc`` (from ``d_start``, up to d)
    and the sequence length by ``n_inc`` points (from ``n_start``, up to the model's n_points).
Checkpoints
    ``<out>/checkpoint.safetensors``, written atomically (a temporary file in the same folder moved
    into place: an interrupted write leaves the previous checkpoint whole) every ``save_every``
    steps and at the end: the model, Adam's state, the data generator's state, the step, the loss
    history and both configurations (in the metadata). Running the same training again resumes
    from it; the result equals an uninterrupted run bit for bit on the same device and threads.
Snapshots
    ``snapshots`` lists steps at which the weights alone (no optimizer) are also written to
    ``<out>/snapshots/step-NNNNNN.safetensors``: the capability family of one run, for the
    convergence study. A save also happens every ``save_seconds`` of wall time.
Stopping
    SIGTERM or SIGINT during :func:`train` (when called from the main thread) ends the run after the
    current step, checkpoint written; running the same command again resumes.
Precision
    float32 on the CPU (``threads`` sets torch's intra-op threads); on CUDA the forward pass runs
    under bfloat16 autocast, parameters and Adam's state stay float32.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from ..files import write_atomic
from .model import InContextModel, ModelConfig, autocast
from .tasks import parse_mixture

FORMAT = "platonic_fast.icl.checkpoint/1"
CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True)
class Curriculum:
    d_start: int
    n_start: int
    every: int
    d_inc: int = 1
    n_inc: int = 2

    def at(self, step: int, d: int, n_points: int) -> tuple[int, int]:
        stage = step // self.every
        return min(d, self.d_start + self.d_inc * stage), min(n_points, self.n_start + self.n_inc * stage)


@dataclass(frozen=True)
class TrainConfig:
    mixture: str
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-4
    warmup: int = 0            # linear warm-up steps
    schedule: str = "constant"  # or "cosine": decay to lr/10 over the steps after warm-up
    clip: float | None = 1.0   # gradient-norm clipping (None: none)
    seed: int = 0
    curriculum: Curriculum | None = None
    save_every: int = 500
    log_every: int = 50        # loss history granularity
    save_seconds: float | None = None  # also checkpoint when this long has passed since the last save
    snapshots: tuple = ()      # steps whose weights are kept apart (<out>/snapshots/step-NNNNNN.safetensors)

    def __post_init__(self):
        object.__setattr__(self, "snapshots", tuple(int(v) for v in self.snapshots))
        if isinstance(self.curriculum, dict):
            object.__setattr__(self, "curriculum", Curriculum(**self.curriculum))
        object.__setattr__(self, "mixture", parse_mixture(self.mixture).spec)
        for key in ("steps", "batch_size", "save_every", "log_every"):
            v = getattr(self, key)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{key} must be a positive integer, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"TrainConfig.schedule must be 'constant' or 'cosine', got {self.schedule!r}")

    def check(self, model: ModelConfig) -> None:
        parse_mixture(self.mixture).check(model.d)
        c = self.curriculum
        if c is not None:
            if not 1 <= c.d_start <= model.d:
                raise ValueError(f"curriculum d_start={c.d_start} must lie in 1..d={model.d}")
            if not 1 <= c.n_start <= model.n_points:
                raise ValueError(f"curriculum n_start={c.n_start} must lie in 1..n_points={model.n_points}")
            if c.every < 1 or c.d_inc < 0 or c.n_inc < 0:
                raise ValueError("curriculum every must be >= 1 and its increments >= 0")

    def lr_at(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.schedule == "cosine":
            t = (step - self.warmup) / max(1, self.steps - self.warmup)
            return self.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, t))))
        return self.lr

    def as_dict(self) -> dict:
        return asdict(self)

    # settings that may change between an interrupted run and its continuation
    RESUMABLE = ("steps", "save_every", "save_seconds", "snapshots")


@dataclass
class TrainResult:
    model: InContextModel
    step: int
    history: list = field(default_factory=list)  # [step, mean loss over the last log_every steps]
    path: Path | None = None
    seconds: float = 0.0
    resumed_from: int = 0


def resolve_device(device=None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return dev


def train(model_config: ModelConfig, train_config: TrainConfig, out=None, *, device=None, threads: int | None = None,
          progress: bool = True, stop_at: int | None = None, desc: str | None = None,
          position: int = 0, report=None) -> TrainResult:
    """Train (or resume) one model; ``out`` holds its checkpoint (None: keep nothing on disk).

    ``stop_at`` ends the run after that step, checkpoint written, as an interruption would.
    ``report`` (a callable taking one line of text) hears of every checkpoint written: step, loss,
    seconds per step (a log file's view of the progress bar).
    """
    from tqdm.auto import tqdm

    train_config.check(model_config)
    dev = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    model = InContextModel(model_config, seed=train_config.seed).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    gen = torch.Generator().manual_seed(train_config.seed + 1)
    mixture = parse_mixture(train_config.mixture)
    step, history, window = 0, [], []
    path = Path(out) / CHECKPOINT if out is not None else None
    if path is not None and path.exists():
        step, history, window = _restore(path, model, opt, gen, model_config, train_config, dev)
    resumed_from = step
    end = train_config.steps if stop_at is None else min(stop_at, train_config.steps)
    t0 = last_save = time.perf_counter()
    stop = _StopFlag(path is not None)
    bar = tqdm(total=train_config.steps, initial=step, desc=desc or train_config.mixture, disable=not progress,
               position=position, leave=True, dynamic_ncols=True)
    running = sum(window) / len(window) if window else None
    model.train()
    try:
        while step < end and not stop.raised:
            d_eff, n_eff = (model_config.d, model_config.n_points) if train_config.curriculum is None else \
                train_config.curriculum.at(step, model_config.d, model_config.n_points)
            xs, ys, _ = mixture.sample(train_config.batch_size, n_eff, model_config.d, gen, d_eff=d_eff)
            xs, ys = xs.to(dev), ys.to(dev)
            for g in opt.param_groups:
                g["lr"] = train_config.lr_at(step)
            with autocast(dev):
                pred = model(xs, ys)
            loss = (pred.float() - ys).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if train_config.clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.clip)
            opt.step()
            step += 1
            value = float(loss.detach())
            window.append(value)
            running = value if running is None else 0.98 * running + 0.02 * value
            if step % train_config.log_every == 0 or step == train_config.steps:
                history.append([step, sum(window) / len(window)])
                window = []
            if step % 10 == 0 or step == end:
                bar.set_postfix(loss=f"{running:.4f}", d=d_eff, n=n_eff, refresh=False)
            bar.update(1)
            if path is not None and step in train_config.snapshots:
                save_weights(path.parent / "snapshots" / f"step-{step:06d}.safetensors", model, model_config,
                             train_config, step, history)
            timed = (train_config.save_seconds is not None
                     and time.perf_counter() - last_save >= train_config.save_seconds)
            if path is not None and (step % train_config.save_every == 0 or step == end or timed or stop.raised):
                save_checkpoint(path, model, opt, gen, model_config, train_config, step, history, window)
                now = time.perf_counter()
                if report is not None:
                    report(f"step {step}/{train_config.steps} loss {running:.4f} d={d_eff} n={n_eff} "
                           f"{(now - t0) / max(step - resumed_from, 1):.3f} s/step"
                           + (" (stopping on a signal)" if stop.raised else ""))
                last_save = now
    finally:
        stop.restore()
        bar.close()
    model.eval()
    return TrainResult(model=model, step=step, history=history, path=path, seconds=time.perf_counter() - t0,
                       resumed_from=resumed_from)


class _StopFlag:
    """SIGTERM / SIGINT set a flag the training loop reads after each step (save, then return)."""

    def __init__(self, active: bool):
        import signal
        import threading

        self.raised = False
        self._old = {}
        if not active or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.raised = True

    def restore(self):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


# --- checkpoints --------------------------------------------------------------------------------

def save_checkpoint(path, model, opt, gen, model_config, train_config, step, history, window=()) -> Path:
    from safetensors.torch import save_file

    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"optim/{idx}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng/data"] = gen.get_state()
    meta = {"format": FORMAT, "model_config": json.dumps(model_config.as_dict()),
            "train_config": json.dumps(train_config.as_dict()), "step": str(step),
            "history": json.dumps(history), "window": json.dumps(list(window)),
            "optim_groups": json.dumps(sd["param_groups"]),
            "complete": "1" if step >= train_config.steps else "0"}
    return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def save_weights(path, model, model_config, train_config, step, history) -> Path:
    """The model's weights alone (a snapshot), readable by :func:`load_model`."""
    from safetensors.torch import save_file

    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "model_config": json.dumps(model_config.as_dict()),
            "train_config": json.dumps(train_config.as_dict()), "step": str(step),
            "history": json.dumps(history), "complete": "1" if step >= train_config.steps else "0", "weights_only": "1"}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_checkpoint(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint, with a clear error for anything else."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not an icl checkpoint (format {meta.get('format')!r})")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except ValueError:
        raise
    except Exception as exc:  # safetensors' own errors: a truncated or foreign file
        raise ValueError(f"{path} cannot be read as a checkpoint: {exc}") from exc
    return tensors, meta


def configs_of(meta: dict) -> tuple[ModelConfig, TrainConfig]:
    return ModelConfig(**json.loads(meta["model_config"])), TrainConfig(**json.loads(meta["train_config"]))


def _restore(path, model, opt, gen, model_config, train_config, dev):
    tensors, meta = read_checkpoint(path)
    old_model, old_train = configs_of(meta)
    diffs = [f"{k}: {v} -> {getattr(model_config, k)}" for k, v in old_model.as_dict().items()
             if getattr(model_config, k) != v]
    diffs += [f"{f.name}: {getattr(old_train, f.name)} -> {getattr(train_config, f.name)}"
              for f in fields(TrainConfig) if f.name not in TrainConfig.RESUMABLE
              and getattr(old_train, f.name) != getattr(train_config, f.name)]
    if diffs:
        raise ValueError(f"{path} was trained with other settings ({'; '.join(diffs)}); "
                         "train into another folder or remove it")
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim/"):
            _, idx, key = k.split("/", 2)
            state.setdefault(int(idx), {})[key] = v.to(dev) if key != "step" else v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["optim_groups"])})
    gen.set_state(tensors["rng/data"])
    return int(meta["step"]), json.loads(meta["history"]), json.loads(meta.get("window", "[]"))


def load_model(path, device=None) -> tuple[InContextModel, dict]:
    """A trained model (eval mode) and its checkpoint's description."""
    tensors, meta = read_checkpoint(path)
    model_config, train_config = configs_of(meta)
    model = InContextModel(model_config, seed=train_config.seed)
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    model.to(resolve_device(device)).eval()
    info = {"model_config": model_config, "train_config": train_config, "step": int(meta["step"]),
            "history": json.loads(meta["history"]), "complete": meta.get("complete") == "1"}
    return model, info


def with_steps(config: TrainConfig, steps: int) -> TrainConfig:
    return replace(config, steps=steps)
