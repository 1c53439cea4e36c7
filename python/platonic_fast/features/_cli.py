"""``platonic-fast extract`` and ``platonic-fast models``: options, validation, and the extraction loop.

Every option is checked before any data or model is loaded; a bad one is a :class:`UsageError`
(exit 2) naming the option and the fix. A model that fails while extracting is reported in one
line and the others go on (exit 1 at the end). Each finished model is written atomically with its
sample manifest, so an interrupted run (Ctrl-C) resumes where it stopped when run again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class UsageError(ValueError):
    """A bad command-line option or input: exit code 2."""


def add_parsers(sub, debug_parent) -> None:
    ext = sub.add_parser(
        "extract", parents=[debug_parent],
        help="layer-wise features of models on a dataset -> one safetensors file per model",
        description=textwrap.fill(
            "Extract pooled features of every layer: language models (transformers) read texts, vision "
            "models (timm) read images. Texts and images of the same rows (--texts with --images, or --hf-dataset "
            "with --text-column and --image-column, or --colours) give files that record the same sample "
            "fingerprint, which `measure` requires to pair them. A model whose file exists for the same model, "
            "pooling, dataset and samples is skipped (--force redoes it); one whose samples changed is extracted "
            "again. Each file gets a manifest of its rows (<name>.samples.json).", 100),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="models: hub ids, timm names, local folders, aliases of the model sets (see `platonic-fast models`),"
        " or NAME=MODEL to choose the output name.\n"
        "examples:\n"
        "  platonic-fast extract bloom_560m clip_b --hf-dataset minhuh/prh --dataset-revision wit_1024 \\\n"
        "      --text-column text --image-column image\n"
        "  platonic-fast extract --model-set val --texts captions.txt --images photos/\n"
        "  platonic-fast extract ./my-llama --texts captions.txt --random-init",
    )
    ext.add_argument("models", nargs="*", metavar="MODEL",
                     help="hub ids, timm names, local folders, aliases, NAME=MODEL")
    ext.add_argument("--model-set", action="append", default=[], metavar="SET",
                     help="add the models of a named set (repeatable; `platonic-fast models` lists them); models "
                     "of a modality the data lacks are skipped")
    ext.add_argument("--model-sets", metavar="FILE", help="a JSON file of extra sets and aliases "
                     '({"sets": {name: [models]}, "aliases": {short: model}}); also $PLATONIC_FAST_MODEL_SETS')
    data = ext.add_argument_group("data (one source; --texts and --images together are paired line i with image i)")
    data.add_argument("--texts", metavar="FILE", help="a UTF-8 text file, one sample per line")
    data.add_argument("--images", metavar="DIR", help="a folder of images, read in natural order (im2 before im10)")
    data.add_argument("--hf-dataset", metavar="ID_OR_PATH",
                      help="a HuggingFace dataset: hub id (from the local cache when offline), a folder of data "
                      "files, or a save_to_disk folder")
    data.add_argument("--colours", action="store_true",
                      help="the built-in colour set: 949 XKCD colour names ('The color <name>.') and swatches")
    data.add_argument("--text-column", metavar="COL", help="with --hf-dataset: the text column")
    data.add_argument("--image-column", metavar="COL", help="with --hf-dataset: the image column")
    data.add_argument("--column", metavar="COL", help="with --hf-dataset: one column, text or image by its type")
    data.add_argument("--caption-index", type=int, metavar="K",
                      help="with a text column holding lists of captions (WIT): take caption K (default 0)")
    data.add_argument("--split", help="with --hf-dataset: the split (default: the only one, or train)")
    data.add_argument("--subset", help="with --hf-dataset: the configuration (load_dataset's name=)")
    data.add_argument("--dataset-revision", metavar="REV", help="with --hf-dataset: hub branch, tag or commit "
                      "(the paper's WIT set: --hf-dataset minhuh/prh --dataset-revision wit_1024)")
    data.add_argument("--limit", type=int, default=None, help="use the first N samples only")
    data.add_argument("--skip-blank", action="store_true",
                      help="drop rows whose text is blank or missing (paired images with them) instead of failing")
    model = ext.add_argument_group("models and compute")
    model.add_argument("--modality", choices=["language", "vision"],
                       help="force the kind of every model (default: from the model: timm names and timm folders "
                       "are vision, transformers ones language)")
    model.add_argument("--pool", help="language: avg (default) or last; vision: cls (the default for models with a "
                       "class token) or mean (patch-token mean; for CNNs, the spatial mean of every stage, their "
                       "default)")
    model.add_argument("--batch-size", type=int, default=None)
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    model.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: fp32 on CPU, bf16 on GPU)")
    model.add_argument("--revision", metavar="REV", help="model hub branch, tag or commit (transformers; timm hub ids)")
    model.add_argument("--trust-remote-code", action="store_true",
                       help="run the model repository's own code (transformers trust_remote_code): trusted models only")
    model.add_argument("--device-map", metavar="MAP",
                       help="language models: transformers device_map (auto, balanced, cpu, cuda:0, or JSON) to "
                       "spread a large model over GPUs/CPU; needs accelerate")
    model.add_argument("--load-in", choices=["8bit", "4bit"],
                       help="language models: quantized loading via bitsandbytes (pip install 'platonic_fast[large]'; "
                       "needs a CUDA GPU)")
    model.add_argument("--random-init", action="store_true",
                       help="same architectures with random weights (the untrained baseline); files end in "
                       "_random-init")
    model.add_argument("--seed", type=int, default=0, help="seed of --random-init (default 0)")
    out = ext.add_argument_group("output")
    out.add_argument("--out", default="features", help="output folder (default ./features)")
    out.add_argument("--force", action="store_true", help="re-extract models whose file is up to date")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")

    models = sub.add_parser("models", parents=[debug_parent], help="list the model sets and aliases",
                            description="The named model sets (the paper's, and those of --model-sets FILE / "
                            "$PLATONIC_FAST_MODEL_SETS) and the short aliases. Nothing is loaded.")
    models.add_argument("set", nargs="?", help="show this set's models")
    models.add_argument("--model-sets", metavar="FILE", help="a JSON file of extra sets and aliases")


# --- the models command ------------------------------------------------------------------------------


def run_models(args) -> int:
    from . import model_sets

    _load_sets_file(args.model_sets)
    if args.set:
        try:
            members = model_sets.members(args.set)
        except KeyError as e:
            raise UsageError(f"models: {e.args[0]}") from None
        by_model = {v: k for k, v in model_sets.ALIASES.items()}
        for m in members:
            kind = model_sets.modality(m) or "?"
            print(f"{by_model.get(m, ''):<16}{kind:<10}{m}")
        return 0
    model_sets._load_env()
    for name, members in model_sets.SETS.items():
        kinds = sorted({model_sets.modality(m) or "?" for m in members})
        print(f"{name:<14}{len(members):>3} models  ({', '.join(kinds)})")
    print("aliases: " + ", ".join(model_sets.ALIASES))
    return 0


def _load_sets_file(path) -> None:
    if path is None:
        return
    from . import model_sets

    try:
        model_sets.load_file(path)
    except (OSError, ValueError) as e:
        raise UsageError(f"--model-sets: {e}") from None


# --- the extract command -----------------------------------------------------------------------------


@dataclass
class Job:
    label: str  # as the user named it
    source: str  # hub id, timm name or path
    kind: str  # "language" | "vision"
    stem: str  # output file stem
    from_set: bool = False
    pool: str = "avg"  # --pool, else the model's default (a CNN's is "mean": it has no class token)


def run_extract(args) -> int:
    opts = _check_options(args)
    jobs = _jobs(args)
    samples = _samples(args)
    jobs = _match_data(jobs, samples)
    from ..files import OutputFolderLocked, lock_folder

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder (give a folder path)")
    # One run at a time per folder (as measure): two runs naming the same file would overwrite
    # one model's features with another's.
    try:
        with lock_folder(out, 0, what="extract"):
            return _run_locked(jobs, samples, out, args, opts)
    except OutputFolderLocked as e:
        raise UsageError(str(e)) from None


def _run_locked(jobs, samples, out: Path, args, opts: dict) -> int:
    from ..files import OutputWriteError, clean_stale_temporaries

    clean_stale_temporaries(out)  # what killed runs left (their PIDs are gone)
    plan = _plan(jobs, samples, out, args)
    if args.no_progress:
        _quiet_progress()
    failed = []
    for job, path, todo in plan:
        if not todo:
            continue
        try:
            _extract_one(job, path, samples, args, opts)
        except (KeyboardInterrupt, UsageError, OutputWriteError):
            raise
        except Exception as exc:
            if getattr(args, "debug", False):
                raise
            failed.append(job.label)
            print(f"FAILED {job.label}: {_one_line(exc)}", file=sys.stderr)
    if failed:
        print(f"platonic-fast extract: error: {len(failed)} of {len(plan)} model(s) failed: {', '.join(failed)} "
              "(the others are written; run the same command again to retry, --debug for tracebacks)",
              file=sys.stderr)
        return 1
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 2000 else text[:2000] + "..."


def _check_options(args) -> dict:
    """Every option that can be checked without loading anything; returns load/compute options."""
    import torch

    from . import _common as C

    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--limit", args.limit, 1),
                               ("--caption-index", args.caption_index, 0)):
        if value is not None and value < least:
            raise UsageError(f"{flag} must be >= {least}, got {value}")
    if args.pool is not None:
        allowed = {"language": ("avg", "last"), "vision": ("cls", "mean")}
        kinds = [args.modality] if args.modality else ["language", "vision"]
        if not any(args.pool in allowed[k] for k in kinds):
            raise UsageError(f"--pool {args.pool!r} is not a pooling: language models take avg or last, vision "
                             "models cls or mean")
    dtype = None
    if args.dtype is not None:
        try:
            dtype = C.resolve_dtype(args.dtype, torch.device("cpu"))
        except (ValueError, TypeError):
            raise UsageError(f"--dtype {args.dtype!r} is not a dtype: use float32, bfloat16 or float16") from None
    device = None
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except (RuntimeError, TypeError):
            raise UsageError(f"--device {args.device!r} is not a device: use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: no GPU here (torch sees no CUDA device); use --device cpu")
    device_map = None
    if args.device_map is not None:
        if args.device is not None:
            raise UsageError("give --device or --device-map, not both (--device-map places the model itself)")
        device_map = args.device_map
        if device_map.lstrip().startswith("{"):
            try:
                device_map = json.loads(device_map)
            except ValueError as e:
                raise UsageError(f"--device-map is not valid JSON: {e}") from None
        import importlib.util

        if importlib.util.find_spec("accelerate") is None:
            raise UsageError("--device-map needs the accelerate package: pip install accelerate "
                             "(it comes with 'platonic_fast[features]')")
    if args.load_in is not None:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise UsageError(f"--load-in {args.load_in} needs bitsandbytes (and a CUDA GPU): "
                             "pip install 'platonic_fast[large]'")
    if args.random_init and (args.device_map is not None or args.load_in is not None):
        raise UsageError("--random-init builds models from their configs: it cannot be combined with "
                         "--device-map or --load-in (which load pretrained weights)")
    if args.revision is not None and not args.revision.strip():
        raise UsageError("--revision must name a branch, tag or commit")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} exists and is not a folder")
    return {"dtype": dtype, "device": args.device, "device_map": device_map}


def _jobs(args) -> list[Job]:
    from . import _common as C
    from . import model_sets

    _load_sets_file(args.model_sets)
    named: list[tuple[str | None, str, bool]] = []
    for m in args.models:
        name, eq, rest = m.partition("=")
        if eq and not rest.strip() and _NAME_RE.match(name) and not Path(m).expanduser().exists():
            raise UsageError(f"{m!r} names no model: give NAME=MODEL (a hub id, timm name, local folder or alias)")
        if rest and _NAME_RE.match(name) and not Path(m).expanduser().exists():
            named.append((name, rest, False))
        else:
            named.append((None, m, False))
    for set_name in args.model_set:
        try:
            named.extend((None, m, True) for m in model_sets.members(set_name))
        except KeyError as e:
            raise UsageError(f"--model-set: {e.args[0]}") from None
    if not named:
        raise UsageError("name at least one model (hub id, timm name, local folder or alias) or --model-set SET")
    jobs = []
    for name, label, from_set in named:
        if not label.strip():
            raise UsageError("a model name is empty")
        source = model_sets.resolve(label)
        try:
            local = C.check_local_path(source)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
        kind = args.modality or _kind(source, local, args)
        if local:
            try:
                C.check_kind(source, kind)  # a forced --modality that the folder contradicts
            except ValueError as e:
                raise UsageError(f"--modality {kind}: {e}") from None
        pool = args.pool or "avg"
        if kind == "vision":
            from .vision import check_source_pool, default_pool

            try:  # the name and the pool are checked here, before any weights load
                if args.pool is None:
                    pool = default_pool(source, None if local else args.revision)
                else:
                    check_source_pool(source, args.pool, None if local else args.revision)
            except ValueError as e:
                raise UsageError(f"{label}: {e}") from None
        if local and args.revision is not None:
            raise UsageError(f"--revision applies to hub models; {label!r} is a local folder (for the dataset's "
                             "revision use --dataset-revision)")
        stem = name or _stem(source, local)
        stem += f"_pool-{pool}"
        if args.revision is not None:
            stem += "_rev-" + re.sub(r"[^A-Za-z0-9._-]", "_", args.revision)
        if args.random_init:
            stem += "_random-init"
        jobs.append(Job(label, source, kind, stem, from_set, pool))
    seen: dict[str, Job] = {}
    for job in jobs:
        other = seen.get(job.stem)
        if other is not None and other.source != job.source:
            raise UsageError(f"{other.label!r} and {job.label!r} would both be written to {job.stem}.safetensors; "
                             f"name them: NAME={job.label}")
        seen[job.stem] = job
    # The same model twice (listed and in a set) is extracted once.
    unique = {}
    for job in jobs:
        unique.setdefault(job.stem, job)
    return list(unique.values())


def _stem(source: str, local: bool) -> str:
    if local:
        base = Path(source).expanduser().resolve().name
    else:
        base = source.removeprefix("hf-hub:").removeprefix("hf_hub:").strip("/").replace("/", "_")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", base) or "model"


def _kind(source: str, local: bool, args) -> str:
    from . import _common as C
    from . import model_sets

    if local:
        kind = C.folder_kind(source)
        if kind is None:
            raise UsageError(f"cannot tell whether {source!r} is a transformers (language) or a timm (vision) "
                             "folder: its config.json has neither model_type nor architecture; pass --modality")
        return kind
    kind = model_sets.modality(source)
    if kind:
        return kind
    if source.startswith(("hf-hub:", "hf_hub:", "timm/")):
        return "vision"
    if "/" in source:
        return "language"
    import timm

    if timm.is_model(source):
        return "vision"
    # A bare name that is no timm model: a transformers hub id ("gpt2"), unless the data has only
    # images (then it must be a timm name, and its spelling is checked with suggestions).
    if args.images and not args.texts or args.image_column and not args.text_column:
        return "vision"
    return "language"


def _samples(args):
    from . import samples as S

    datasets_mod = None
    if args.hf_dataset:
        try:
            import datasets as datasets_mod
        except ImportError:
            raise UsageError("--hf-dataset needs the datasets package: pip install 'platonic_fast[features]'") from None
        if args.no_progress:
            datasets_mod.disable_progress_bars()
    try:
        return S.load_samples(texts=args.texts, images=args.images, hf_dataset=args.hf_dataset, column=args.column,
                              text_column=args.text_column, image_column=args.image_column,
                              caption_index=args.caption_index, split=args.split, subset=args.subset,
                              revision=args.dataset_revision, colours=args.colours, limit=args.limit,
                              skip_blank=args.skip_blank)
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        raise UsageError(_one_line(e)) from None


def _match_data(jobs: list[Job], samples) -> list[Job]:
    have = {"language": samples.texts is not None, "vision": samples.images is not None}
    kept, skipped = [], []
    for job in jobs:
        if have[job.kind]:
            kept.append(job)
        elif job.from_set:
            skipped.append(job)
        else:
            need = ("texts (--texts, --text-column, --colours)" if job.kind == "language"
                    else "images (--images, --image-column, --colours)")
            raise UsageError(f"{job.label!r} is a {job.kind} model but the data has no {need.split(' ')[0]}: "
                             f"give it {need}")
    if skipped:
        kind = skipped[0].kind
        print(f"note: {len(skipped)} {kind} model(s) of the model set skipped: the data has no "
              f"{'texts' if kind == 'language' else 'images'}")
    if not kept:
        raise UsageError("no model matches the data (language models read texts, vision models images)")
    if samples.caption_default and any(j.kind == "language" for j in kept):
        column = samples.modality_spec["language"]["text_column"]
        print(f"note: text column {column!r} holds lists of captions; using caption 0 "
              "(choose another with --caption-index)")
    return kept


def _wanted(job: Job, samples, args) -> dict:
    from . import _common as C

    return {"model_id": C.model_identity(job.source), "modality": job.kind,
            "pooling": job.pool, "revision": args.revision,
            "random_init": bool(args.random_init), "seed": args.seed if args.random_init else None,
            "fingerprint": samples.fingerprint, "spec": samples.spec_for(job.kind)}


def _plan(jobs: list[Job], samples, out: Path, args) -> list[tuple[Job, Path, bool]]:
    """(job, output path, whether to extract) for every job; collisions with another model's file stop here."""
    from .provenance import provenance

    plan = []
    for job in jobs:
        path = out / f"{job.stem}.safetensors"
        want = _wanted(job, samples, args)
        todo = True
        if path.exists():
            try:
                have = provenance(path)
                meta_spec = (have.get("samples") or {}).get("spec")
            except (OSError, ValueError) as e:
                print(f"{path}: unreadable ({_one_line(e)}); extracting it again")
                plan.append((job, path, True))
                continue
            if have["model_id"] is not None and have["model_id"] != want["model_id"]:
                raise UsageError(f"{path} holds features of {have['model_id']!r}, not of {want['model_id']!r}; "
                                 f"give this model another name (NAME={job.label}) or another --out")
            stale = [what for what, same in (
                ("the sample fingerprint", have["fingerprint"] == want["fingerprint"]),
                ("the dataset spec", meta_spec == want["spec"]),
                ("the pooling", have["pooling"] == want["pooling"]),
                ("the modality", have["modality"] == want["modality"]),
                ("the revision", have["revision"] == want["revision"]),
                ("random init", have["random_init"] == want["random_init"]),
            ) if not same]
            if args.force:
                print(f"{path}: --force, extracting again")
            elif stale:
                print(f"{path}: out of date ({', '.join(stale)} changed), extracting again")
            else:
                print(f"{path} exists for the same model, pooling and samples, skipped (use --force to redo)")
                todo = False
                if not _manifest_current(_manifest_path(path), samples, job.kind):
                    # an interrupted run wrote the features but not (or not yet) their manifest
                    print(f"{_manifest_path(path)}: missing or of other samples, written again")
                    samples.write_manifest(_manifest_path(path), job.kind)
        plan.append((job, path, todo))
    return plan


def _extract_one(job: Job, path: Path, samples, args, opts: dict) -> None:
    from . import language, vision

    kwargs = {"pool": job.pool, "device": opts["device"],
              "dtype": opts["dtype"], "progress": not args.no_progress, "revision": args.revision,
              "random_init": args.random_init, "seed": args.seed, "dataset": samples.label}
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    if job.kind == "language":
        kwargs.update(trust_remote_code=args.trust_remote_code, device_map=opts["device_map"], load_in=args.load_in)
        feats = language(job.source, samples.texts, **kwargs)
    else:
        feats = vision(job.source, samples.images, **kwargs)
    feats.save(path)
    samples.write_manifest(_manifest_path(path), job.kind)
    layers = feats.layers
    shape = " x ".join(map(str, layers.shape)) if hasattr(layers, "shape") else f"{feats.n} x {len(layers)} layers"
    print(f"{job.label}: {shape} -> {path}")


def _manifest_current(path: Path, samples, kind: str) -> bool:
    """Whether the manifest beside a features file lists exactly these samples."""
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(samples.manifest(kind)))
    except (OSError, ValueError):
        return False


def _manifest_path(path: Path) -> Path:
    """``<stem>.samples.json`` beside ``<stem>.safetensors``: the rows, in order."""
    return path.with_name(path.name.removesuffix(".safetensors") + ".samples.json")


def _quiet_progress() -> None:
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    for mod, fn in (("transformers.utils.logging", "disable_progress_bar"), ("datasets", "disable_progress_bars"),
                    ("huggingface_hub.utils", "disable_progress_bars")):
        try:
            import importlib

            getattr(importlib.import_module(mod), fn)()
        except (ImportError, AttributeError):
            pass
