"""The ``platonic-fast`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="platonic-fast", description="Fast, exact representational alignment.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="the built-in offline demo: the paper's colour case study on real, shipped data",
        description="949 XKCD colour names: MiniLM's every layer (language) and pixel "
        "co-occurrence in scikit-image's photographs (vision) against CIELAB (perception), with "
        "random-weight and shuffled baselines. Prints a table, writes JSON and a figure.",
    )
    demo.add_argument("--out", default="platonic_fast_demo", help="output folder for JSON and PNG")
    demo.add_argument("--quick", action="store_true", help="fewer pixel pairs and MDS iterations (seconds)")
    demo.add_argument("--seed", type=int, default=0)

    sub.add_parser("env", help="print what was built and which backends are usable here")

    ext = sub.add_parser(
        "extract",
        help="layer-wise features of models on a dataset -> one safetensors file per model",
        description="Extract pooled features of every layer. Language models read texts, vision "
        "models read images. A model whose file already exists is skipped (use --force).",
    )
    ext.add_argument("models", nargs="+", help="hub ids or local folders (transformers / timm)")
    data = ext.add_mutually_exclusive_group(required=True)
    data.add_argument("--texts", help="a text file, one sample per line")
    data.add_argument("--images", help="a folder of images (sorted by file name)")
    data.add_argument("--hf-dataset", help="a HuggingFace dataset folder (save_to_disk) or cached name")
    data.add_argument("--colours", action="store_true",
                      help="the built-in colour set: the 949 XKCD colour names as texts "
                      "('The color <name>.') and plain swatches of them as images")
    ext.add_argument("--column", help="with --hf-dataset: the column to read (text or image)")
    ext.add_argument("--split", help="with --hf-dataset: the split (default: the only one)")
    ext.add_argument("--modality", choices=["language", "vision"],
                     help="default: language for texts, vision for images")
    ext.add_argument("--pool", help="language: avg (default) or last; vision: cls (default) or mean")
    ext.add_argument("--batch-size", type=int, default=None)
    ext.add_argument("--device", default=None)
    ext.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    ext.add_argument("--limit", type=int, default=None, help="use the first N samples only")
    ext.add_argument("--out", default="features", help="output folder (default ./features)")
    ext.add_argument("--force", action="store_true", help="re-extract models whose file exists")

    meas = sub.add_parser(
        "measure",
        help="align a model set with a model set (feature files) -> scores JSON/NPZ + heat map",
        description="Every model of X against every model of Y (or X with itself): the best "
        "layer pair and its score. Finished pairs are saved as they complete, keyed by both "
        "files' content fingerprints and every setting; running the same command again resumes "
        "an interrupted sweep. One run at a time per output folder (a POSIX flock on <out>/.lock): "
        "a second one stops at once, or waits with --wait.",
    )
    meas.add_argument("x", nargs="+", help="feature files (.safetensors/.pt) or folders of them")
    meas.add_argument("--against", nargs="+", default=None, metavar="Y",
                      help="the second model set (default: X against itself)")
    meas.add_argument("--metric", default="mutual_knn", help="one of the SUPPORTED_METRICS (default mutual_knn)")
    meas.add_argument("--topk", type=int, default=10)
    meas.add_argument("--q", type=float, default=0.95, help="outlier clamping quantile (1 disables it)")
    meas.add_argument("--exact", action="store_true", help="exact whole-tensor quantile for the clamp")
    meas.add_argument("--concat", action="store_true", help="also score the concatenation of all layers")
    meas.add_argument("--out", default="alignment", help="output folder (default ./alignment)")
    meas.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="when another run holds the output folder, wait up to SECONDS for it "
                      "(default 0: stop at once; inf: no limit)")
    meas.add_argument("--no-progress", action="store_true")

    ver = sub.add_parser(
        "verify",
        help="check feature files against the checksum stored in them",
        description="Recompute each features file's checksum (written by features.save / extract) "
        "and compare it with the stored one. One line per file; exit 0 when all match, 1 when any "
        "differs, has no checksum or cannot be read.",
    )
    ver.add_argument("files", nargs="+", metavar="FILE", help=".safetensors feature files")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        run(out_dir=args.out, quick=args.quick, seed=args.seed)
    elif args.command == "env":
        from .env import main as env_main

        env_main()
    elif args.command == "extract":
        try:
            _extract(args)
        except (ValueError, TypeError, ImportError, RuntimeError, OSError) as exc:
            parser.exit(2, f"platonic-fast extract: error: {exc}\n")
    elif args.command == "verify":
        return _verify(args.files)
    elif args.command == "measure":
        from .sweep import OutputFolderLocked, measure_sets

        try:
            res = measure_sets(args.x, args.against, metric=args.metric, topk=args.topk, out_dir=args.out,
                               q=args.q, exact=args.exact, concat=args.concat, progress=not args.no_progress,
                               wait=args.wait)
        except (ValueError, TypeError, OSError, OutputFolderLocked) as exc:
            parser.exit(2, f"platonic-fast measure: error: {_one_line(exc)}\n")
        width = max(len(n) for n in res.names_x)
        print(f"{res.metric} (best layer pair per model pair)")
        print(" " * width + "  " + "  ".join(f"{n[:10]:>10}" for n in res.names_y))
        for name, row in zip(res.names_x, res.scores):
            print(f"{name:<{width}}  " + "  ".join(f"{v:>10.4f}" for v in row))
        print("wrote " + ", ".join(str(p) for p in res.files.values()))
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _verify(files: list[str]) -> int:
    """``platonic-fast verify``: one line per file, exit 1 when any file is not verified."""
    from pathlib import Path

    from .features import verify

    failed = 0
    for name in files:
        try:
            print(f"OK    {name}  {verify(name)}")
        except (ValueError, TypeError, OSError) as exc:
            failed += 1
            reason = _one_line(exc)
            named = repr(str(Path(name)))  # the messages start with the file's name: say it once
            reason = reason[len(named):].lstrip(" :") if reason.startswith(named) else reason
            print(f"FAIL  {name}  {reason}")
    return 1 if failed else 0


def _samples(args):
    """(samples, modality, dataset name) for the extract command's data options."""
    from .features import datasets

    if args.texts:
        return datasets.text_file(args.texts), "language", args.texts
    if args.images:
        return datasets.image_folder(args.images), "vision", args.images
    if args.colours:
        if args.modality == "vision":
            return datasets.colour_swatches(32), "vision", "xkcd-colours"
        return datasets.colour_texts(), "language", "xkcd-colours"
    if not args.column:
        raise ValueError("--hf-dataset needs --column (the text or image column to read)")
    ds = datasets.hf_dataset(args.hf_dataset, split=args.split)
    col = datasets.column(ds, args.column)
    kind = "vision" if args.column.lower() in ("image", "img", "images", "pixel_values") else "language"
    return col, kind, f"{args.hf_dataset}:{args.column}"


def _extract(args) -> None:
    from pathlib import Path

    from . import features

    samples, kind, dataset = _samples(args)
    kind = args.modality or kind
    if args.limit is not None:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        samples = [samples[i] for i in range(min(args.limit, len(samples)))]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = args.pool or ("avg" if kind == "language" else "cls")
    for model in args.models:
        # A local folder is named by its last component; a hub id "org/name" becomes "org_name".
        stem = Path(model).name if Path(model).exists() else str(model).strip("/").replace("/", "_")
        path = out / f"{stem}_pool-{pool}.safetensors"
        if path.exists() and not args.force:
            print(f"{path} exists, skipped (use --force to redo)")
            continue
        kwargs = {"pool": pool, "device": args.device, "dtype": args.dtype, "dataset": dataset}
        if args.batch_size is not None:
            kwargs["batch_size"] = args.batch_size
        extract = features.language if kind == "language" else features.vision
        feats = extract(model, samples, **kwargs)
        feats.save(path)
        layers = feats.layers
        shape = tuple(layers.shape) if hasattr(layers, "shape") else f"{len(layers)} layers"
        print(f"{model}: {shape} -> {path}")


if __name__ == "__main__":
    sys.exit(main())
