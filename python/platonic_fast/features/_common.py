"""Helpers shared by the language and vision extractors: devices, dtypes, hub errors, buffers."""

from __future__ import annotations

import contextlib
import gc
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from .._checks import DTYPE_NAMES

# The library's dtype table, plus the short names people type on a command line.
_DTYPES = {**DTYPE_NAMES, "fp32": torch.float32, "float": torch.float32, "fp16": torch.float16,
           "half": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64, "double": torch.float64}


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def check_pool(pool: Any, allowed: tuple[str, ...]) -> str:
    if pool not in allowed:
        raise ValueError(f"pool must be one of {allowed}, got {pool!r}")
    return pool


def resolve_device(device: Any, model: torch.nn.Module | None = None) -> torch.device:
    """The device to run on: the argument, else a built model's own device, else CUDA if present."""
    if device is None:
        if model is not None:
            p = next(model.parameters(), None)
            if p is not None:
                return p.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch device or a string like 'cpu' or 'cuda:0', got {device!r}") from e


def resolve_dtype(dtype: Any, device: torch.device, model: torch.nn.Module | None = None) -> torch.dtype:
    """The compute dtype: the argument, else a built model's own, else fp32 on CPU and bf16/fp16 on GPU."""
    if dtype is None:
        if model is not None:
            p = next(model.parameters(), None)
            if p is not None and p.is_floating_point():
                return p.dtype
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in _DTYPES:
            raise ValueError(f"dtype must be a floating torch dtype or one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype.removeprefix("torch.")]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype (e.g. torch.bfloat16) or its name, got {dtype!r}")
    return dtype


def model_source(model: Any) -> str | None:
    """The string form of a hub id / local path, or None for an already-built model."""
    if isinstance(model, os.PathLike):
        return os.fspath(model)
    if isinstance(model, str):
        if not model.strip():
            raise ValueError("model must be a hub id, a local path or a built model, got an empty string")
        return model
    return None


def check_local_path(source: str) -> bool:
    """True when ``source`` names an existing local path; raise when it looks like a missing one."""
    if Path(source).expanduser().exists():
        return True
    # A hub id is "name" or "org/name"; anything spelled like a path is a missing local folder.
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or "\\" in source:
        raise FileNotFoundError(f"model {source!r} looks like a local path but does not exist")
    return False


def hub_offline() -> bool:
    """Offline mode as the environment says *now* (huggingface_hub reads it once, at import)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


_OFFLINE_ERRORS = {
    "LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectError", "ConnectTimeout",
    "ReadTimeout", "Timeout", "NameResolutionError", "MaxRetryError", "NewConnectionError",
}
_OFFLINE_PHRASES = ("couldn't connect", "outgoing traffic has been disabled", "cannot find the requested files",
                    "offline mode")


def _is_offline_error(err: BaseException) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ConnectionError) or any(c.__name__ in _OFFLINE_ERRORS for c in type(err).__mro__):
            return True
        if any(p in str(err).lower() for p in _OFFLINE_PHRASES):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def hub_loading(source: str, library: str) -> Iterator[None]:
    """Turn "not cached and no network" failures into one clear RuntimeError naming the model.

    When the environment asks for offline mode, huggingface_hub's import-time flag is forced on
    for the duration: otherwise a download would retry for ~25 s before failing.
    """
    patch = contextlib.nullcontext()
    if hub_offline():
        try:
            from unittest import mock

            from huggingface_hub import constants

            patch = mock.patch.object(constants, "HF_HUB_OFFLINE", True)
        except ImportError:
            pass
    try:
        with patch:
            yield
    except Exception as e:
        if _is_offline_error(e):
            raise RuntimeError(
                f"{library} model {source!r} is not cached locally and no network is reachable "
                f"(or offline mode is on: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}). "
                "Download it once on a machine with network access (it lands in the HuggingFace cache, "
                "HF_HOME), or pass a local folder or an already-built model."
            ) from e
        raise


def release_memory() -> None:
    """Give back the memory of a model just dropped (host, and the CUDA caching allocator)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def count_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" means the current CUDA device; "cuda:0" and "cuda" usually name the same one.
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


@contextlib.contextmanager
def borrowed(model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
             restore: bool = True) -> Iterator[torch.nn.Module]:
    """Yield ``model`` in eval mode on ``device`` in ``dtype``.

    With ``restore`` (a caller's model) the caller's model is left as it was: a dtype change
    works on a converted copy (casting to bf16 and back would round the caller's weights), a
    device move is undone, the train/eval mode is reset. Without it (a model loaded here and
    about to be dropped) the model is converted in place.
    """
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError(f"{type(model).__name__} has no parameters")
    training, home = model.training, p.device
    same_device = _same_device(home, device)
    if p.dtype != dtype and restore:
        import copy

        work = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        try:
            yield work
        finally:
            del work
        return
    if not same_device or p.dtype != dtype:
        model.to(device=device, dtype=dtype)
    model.eval()
    try:
        yield model
    finally:
        if restore:
            model.train(training)
            if not same_device:
                model.to(device=home)


class LayerBuffer:
    """Pooled features of every layer, written batch by batch into preallocated float32 memory.

    Widths are learnt from the first batch: equal widths give one N x L x D tensor (no final
    stack, so peak memory stays at one copy), different widths a list of N x D_l tensors.
    """

    def __init__(self, n: int):
        self.n = n
        self.data: torch.Tensor | list[torch.Tensor] | None = None

    def write(self, rows: torch.Tensor | slice, pooled: list[torch.Tensor]) -> None:
        if self.data is None:
            widths = {p.shape[-1] for p in pooled}
            if len(widths) == 1:
                self.data = torch.empty(self.n, len(pooled), widths.pop(), dtype=torch.float32)
            else:
                self.data = [torch.empty(self.n, p.shape[-1], dtype=torch.float32) for p in pooled]
        if isinstance(self.data, torch.Tensor):
            self.data[rows] = torch.stack([p.float().cpu() for p in pooled], dim=1)
        else:
            for buf, p in zip(self.data, pooled):
                buf[rows] = p.float().cpu()

    def result(self) -> torch.Tensor | list[torch.Tensor]:
        if self.data is None:
            raise ValueError("no samples were processed")
        return self.data


def layer_widths(layers: torch.Tensor | list[torch.Tensor]) -> list[int]:
    if isinstance(layers, torch.Tensor):
        return [int(layers.shape[2])] * int(layers.shape[1])
    return [int(t.shape[1]) for t in layers]
