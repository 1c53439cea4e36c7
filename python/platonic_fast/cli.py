"""The ``platonic-fast`` command line."""

from __future__ import annotations

import argparse
import os
import sys

EXIT_IO_ERROR = 74  # sysexits.h EX_IOERR: an output file could not be written


def main(argv: list[str] | None = None, shard=None) -> int:
    """The command line; ``shard``: the torchrun process group ``measure`` runs over
    (:mod:`platonic_fast.__main__`)."""
    # --debug is accepted before or after the command (SUPPRESS: the command's parser must not
    # reset a value given before it).
    debug_parent = argparse.ArgumentParser(add_help=False)
    debug_parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                              help="show the full traceback of an error (also PLATONIC_FAST_DEBUG=1)")
    parser = argparse.ArgumentParser(prog="platonic-fast", description="Fast, exact representational alignment.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error "
                        "(also PLATONIC_FAST_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, help, description=None):
        """A subcommand that also takes --debug after its name."""
        return sub.add_parser(name, parents=[debug_parent], help=help, description=description)

    demo = command("demo", "the built-in offline demo: the paper's colour case study on real, shipped data",
                   "949 XKCD colour names: MiniLM's every layer (language) and pixel co-occurrence in scikit-image's "
                   "photographs (vision) against CIELAB (perception), with random-weight and shuffled baselines. "
                   "Prints a table, writes JSON and a figure.")
    demo.add_argument("--out", default="platonic_fast_demo", help="output folder for JSON and PNG")
    demo.add_argument("--quick", action="store_true", help="fewer pixel pairs and MDS iterations (seconds)")
    demo.add_argument("--seed", type=int, default=0)

    command("env", "print what was built and which backends are usable here")

    from .features._cli import add_parsers as add_feature_parsers

    add_feature_parsers(sub, debug_parent)  # extract, models

    from .icl.cli import add_parsers as add_icl_parsers

    add_icl_parsers(sub, debug_parent)  # icl train | eval | align | study

    meas = command(
        "measure", "align a model set with a model set (feature files) -> scores JSON/NPZ + heat map",
        "Every model of X against every model of Y (or X with itself): the best "
        "layer pair and its score. Finished pairs are saved as they complete, keyed by both "
        "files' content fingerprints and every setting; running the same command again resumes "
        "an interrupted sweep. One run at a time per output folder (a POSIX flock on <out>/.lock): "
        "a second one stops at once, or waits with --wait.",
    )
    meas.add_argument("x", nargs="+", help="feature files (.safetensors, .npy N x L x D or N x D, .pt) or folders "
                      "of them")
    meas.add_argument("--against", nargs="+", default=None, metavar="Y",
                      help="the second model set (default: X against itself)")
    from .metrics import SUPPORTED_METRICS

    meas.add_argument("--metric", default="mutual_knn", choices=SUPPORTED_METRICS, metavar="METRIC",
                      help=f"one of {', '.join(SUPPORTED_METRICS)} (default mutual_knn)")
    meas.add_argument("--topk", type=int, nargs="+", default=None, metavar="K",
                      help="neighbours for the kNN metrics and cknna (default 10; an error for the other metrics); "
                      "several values (--topk 5 10 20) give one result per value from one kNN pass at the largest")
    opt = meas.add_argument_group("metric options (each only for the metrics that take it)")
    opt.add_argument("--kernel", choices=["ip", "rbf"], default=None,
                     help="cka, unbiased_cka: linear (ip, the default) or RBF kernel")
    opt.add_argument("--sigma", type=float, default=None, help="cka, unbiased_cka with --kernel rbf: its width (1.0)")
    opt.add_argument("--unbiased", action=argparse.BooleanOptionalAction, default=None,
                     help="cka: unbiased HSIC (default off); cknna: --no-unbiased for the biased form (default on)")
    opt.add_argument("--cca-dim", type=int, default=None, help="svcca: singular vectors kept (default 10)")
    opt.add_argument("--distance-agnostic", action="store_true", default=None,
                     help="cknna: score the mutual-neighbour masks alone")
    meas.add_argument("--backend", default="auto", choices=["auto", "cpu", "triton", "cuda", "torch"],
                      help="implementation (default auto: the fastest available for the device)")
    meas.add_argument("--device", default=None,
                      help="where layers are prepared and scored: cpu, cuda, cuda:1 (default: the CPU)")
    meas.add_argument("--q", type=float, default=0.95, help="outlier clamping quantile (1 disables it)")
    meas.add_argument("--exact", action="store_true", help="exact whole-tensor quantile for the clamp")
    meas.add_argument("--concat", action="store_true", help="also score the concatenation of all layers")
    meas.add_argument("--out", default="alignment", help="output folder (default ./alignment)")
    meas.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="when another run holds the output folder, wait up to SECONDS for it "
                      "(default 0: stop at once; inf: no limit)")
    meas.add_argument("--permutations", type=int, default=None, metavar="K",
                      help="calibrate each model pair's layer search against K row permutations (p-values, "
                      "calibrated scores, chance levels; e.g. 200). Default: no null")
    meas.add_argument("--alpha", type=float, default=0.05,
                      help="with --permutations: the level of the threshold and of 'significant' (default 0.05)")
    meas.add_argument("--seed", type=int, default=0,
                      help="with --permutations / --ci-repeats: seeds the permutations and subsamples; every "
                      "model pair gets the same ones (default 0)")
    meas.add_argument("--ci-repeats", type=int, default=None, metavar="R",
                      help="a confidence interval for each model pair's best layer pair from R subsamples of half "
                      "the samples (e.g. 200). Default: none")
    meas.add_argument("--ci-level", type=float, default=0.95, help="with --ci-repeats: the coverage (default 0.95)")
    meas.add_argument("--ci-method", choices=["subsample", "jackknife"], default="subsample",
                      help="with --ci-repeats: quantiles of the subsamples, or a normal jackknife interval")
    meas.add_argument("--name-x", default=None, metavar="LABEL",
                      help="what the X set is called on the heat map (default: its folder's name)")
    meas.add_argument("--name-y", default=None, metavar="LABEL",
                      help="what the Y set is called on the heat map (default: its folder's name)")
    meas.add_argument("--auto-scale", action="store_true",
                      help="heat map colours span the scores' own range (default: the metric's fixed range, "
                      "[0, 1]; [0, topk] for lcs_knn)")
    meas.add_argument("--n-grid", type=_n_grid, default=None, metavar="N1,N2,...",
                      help="alignment as a function of N: the same sweep on nested random subsets of these sizes "
                      "(e.g. 1000,10000,100000; at most the files' N); scores per N in the results and a plot "
                      "n_grid.png (score against N, chance level drawn)")
    meas.add_argument("--n-grid-seed", type=int, default=0,
                      help="with --n-grid: seeds the order the subsets are taken from (default 0; recorded)")
    meas.add_argument("--out-of-core", action=argparse.BooleanOptionalAction, default=None,
                      help="read .safetensors/.npy feature files a block of rows at a time (never a whole model in "
                      "memory; same scores, CKA up to summation order). Default: when the largest file is over a "
                      "quarter of the memory available")
    meas.add_argument("--threads", type=int, default=None, metavar="N",
                      help="CPU threads for torch and the compiled core (default: every core; on a machine shared "
                      "with other jobs, fewer threads than cores is often much faster)")
    meas.add_argument("--no-progress", action="store_true", help="no progress bar")
    meas.add_argument("--allow-mismatched-samples", action="store_true",
                      help="pair feature files whose sample fingerprints differ (extracted from other samples or "
                      "in another order); recorded in the results")

    rep = command(
        "report", "alignment versus capability from a measure folder -> report.json + report.png",
        "Each model's alignment to the reference set (its mean best-layer-pair score over that set's "
        "models) against its capability: 1 - bits-per-byte and log10 parameters as the feature files record them, "
        "and every numeric column of --capability TABLE.csv; Spearman rank correlations with p-values, for raw and "
        "(after measure --permutations) calibrated scores. Needs scipy; the figure needs matplotlib.",
    )
    rep.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the output folder of platonic-fast measure")
    rep.add_argument("--capability", default=None, metavar="TABLE.csv",
                     help="a CSV table: a model-name column (model, name, model_id or the first column) and "
                     "numeric columns such as transfer accuracy; matched by file name or model id")
    rep.add_argument("--reference-set", default=None, metavar="SET",
                     help="the set aligned to: x, y (default: y, the --against set) or a set's name")
    rep.add_argument("--topk", type=int, default=None, help="only this topk of a sweep with several")
    rep.add_argument("--out", default=None, help="output folder (default: SWEEP_DIR)")
    rep.add_argument("--no-plot", action="store_true", help="write report.json only")

    ver = command("verify", "check feature files against the checksum stored in them",
                  "Recompute each features file's checksum (written by features.save / extract) and compare it with "
                  "the stored one. One line per file; exit 0 when all match, 1 when any differs, has no checksum or "
                  "cannot be read.")
    ver.add_argument("files", nargs="+", metavar="FILE", help=".safetensors feature files")

    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get("PLATONIC_FAST_DEBUG", "") not in ("", "0")
    args.debug = debug
    from .features._cli import UsageError
    from .files import OutputWriteError

    # One line per error, never a traceback (unless --debug): exit 2 for a bad option or input,
    # 74 (sysexits' EX_IOERR) when a result cannot be written (a full disk, a read-only folder),
    # 1 for another failure while running, 130 for Ctrl-C (finished work is kept; rerun to resume).
    try:
        return _dispatch(parser, args, shard) or 0
    except OutputWriteError as exc:
        if debug:
            raise
        print(f"platonic-fast {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_IO_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\nplatonic-fast {args.command}: interrupted; what finished is saved, run the same command "
              "again to resume", file=sys.stderr)
        return 130
    except UsageError as exc:
        if debug:
            raise
        print(f"platonic-fast {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the CLI's last resort: one line, not a traceback
        if debug:
            raise
        print(f"platonic-fast {args.command}: error: {_described(exc)} (--debug shows the traceback)",
              file=sys.stderr)
        return 1


def _described(exc: BaseException) -> str:
    """One line: the message, with the exception's type when the message alone says too little."""
    text = _one_line(exc)
    if isinstance(exc, (ValueError, RuntimeError, OSError, ImportError)) and len(text) > 20:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _dispatch(parser, args, shard=None) -> int:
    if args.command == "demo":
        from .demo import run

        run(out_dir=args.out, quick=args.quick, seed=args.seed)
    elif args.command == "env":
        from .env import main as env_main

        env_main()
    elif args.command == "extract":
        from .features._cli import run_extract

        return run_extract(args)
    elif args.command == "models":
        from .features._cli import run_models

        return run_models(args)
    elif args.command == "verify":
        return _verify(args.files)
    elif args.command == "icl":
        from .icl.cli import run as run_icl

        return run_icl(args)
    elif args.command == "report":
        return _report(parser, args)
    elif args.command == "measure":
        from .files import OutputWriteError
        from .sweep import OutputFolderLocked, format_n_grid_table, format_table, measure_sets

        try:
            options = _metric_options(args)
            _set_threads(args.threads)
            res = measure_sets(args.x, args.against, metric=args.metric, topk=args.topk or [10], out_dir=args.out,
                               q=args.q, exact=args.exact, concat=args.concat, progress=not args.no_progress,
                               wait=args.wait, allow_mismatched_samples=args.allow_mismatched_samples,
                               permutations=args.permutations, alpha=args.alpha, seed=args.seed,
                               ci_repeats=args.ci_repeats, ci_level=args.ci_level, ci_method=args.ci_method,
                               backend=args.backend, device=args.device, set_names=(args.name_x, args.name_y),
                               auto_scale=args.auto_scale, n_grid=args.n_grid, n_grid_seed=args.n_grid_seed,
                               out_of_core=args.out_of_core, shard=shard, **options)
        except OutputWriteError:
            raise
        except (ValueError, TypeError, OSError, OutputFolderLocked) as exc:
            parser.exit(2, f"platonic-fast measure: error: {_one_line(exc)}\n")
        _warn_unchecked_pairing(args.x, args.against)  # beside the results (errors above stay one line)
        for k, r in res.by_topk.items():
            if len(res.by_topk) > 1:
                print(f"=== topk={k} ===")
            print(format_table(r))
            print()
            if r.by_n:
                print(format_n_grid_table(r))
                print()
        print("wrote " + ", ".join(str(p) for p in res.files.values()))
        if not any(name.startswith("png") for name in res.files):
            print("no heat map: matplotlib is not installed (pip install 'platonic_fast[plot]')")
    return 0


def _n_grid(text: str) -> list[int]:
    """--n-grid: sample counts separated by commas; 1e4 and 10_000 are read as 10000."""
    values = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            v = int(part)
        except ValueError:
            try:
                f = float(part)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{part!r} is not a sample count") from None
            if not f.is_integer():
                raise argparse.ArgumentTypeError(f"{part!r} is not a whole number of samples") from None
            v = int(f)
        values.append(v)
    if not values:
        raise argparse.ArgumentTypeError("give sample counts separated by commas, e.g. 1000,10000,100000")
    return values


def _report(parser, args) -> int:
    """``platonic-fast report``: the correlations as a table, then the files written."""
    from .files import OutputWriteError
    from .report import report

    try:
        out = report(args.sweep_dir, args.capability, reference_set=args.reference_set, topk=args.topk,
                     out_dir=args.out, plot=not args.no_plot)
    except OutputWriteError:
        raise
    except (ValueError, OSError) as exc:
        parser.exit(2, f"platonic-fast report: error: {_one_line(exc)}\n")
    ref, subj = out["reference_set"], out["subject_set"]
    print(f"{out['metric']}: alignment of {subj['name']} ({len(subj['models'])} models) to {ref['name']} "
          f"({len(ref['models'])} models) against capability")
    for entry in out["results"]:
        if len(out["results"]) > 1:
            print(f"=== topk={entry['topk']} ===")
        width = max(len(c["capability"]) for c in entry["correlations"])
        for c in entry["correlations"]:
            stat = (f"rho = {c['rho']:+.3f}  p = {c['p_value']:.3g}" if c["rho"] is not None else c["note"])
            print(f"  {c['capability']:<{width}}  {c['scores']:<10}  n = {c['n']:<3}  {stat}")
    if out["unmatched"]:
        print(f"table rows matching no model: {', '.join(out['unmatched'])}")
    print("wrote " + ", ".join(out["files"].values()))
    return 0


# measure's metric-option flags and the metric option each sets
_METRIC_FLAGS = {"kernel": ("--kernel", "kernel_metric"), "sigma": ("--sigma", "rbf_sigma"),
                 "unbiased": ("--unbiased/--no-unbiased", "unbiased"), "cca_dim": ("--cca-dim", "cca_dim"),
                 "distance_agnostic": ("--distance-agnostic", "distance_agnostic")}


def _metric_options(args) -> dict:
    """The metric options given on the command line; a flag the metric does not take is an error."""
    from .metrics import METRICS

    spec = METRICS[args.metric]
    if args.topk is not None and not spec.takes_topk:
        takers = [m for m, s in METRICS.items() if s.takes_topk]
        raise ValueError(f"--topk does not apply to --metric {args.metric} (it has no neighbour lists); it is for "
                         f"{', '.join(takers)}")
    options = {}
    for attr, (flag, name) in _METRIC_FLAGS.items():
        value = getattr(args, attr)
        if value is None:
            continue
        if name not in spec.defaults or (name in spec.fixed and value != spec.fixed[name]):
            takers = [m for m, s in METRICS.items() if name in s.defaults and name not in s.fixed]
            raise ValueError(f"{flag} does not apply to --metric {args.metric}; it is for {', '.join(takers)}")
        options[name] = value
    return options


def _warn_unchecked_pairing(x, against) -> None:
    """A warning on stderr when some files to be paired record no sample fingerprint (.npy, .pt,
    files written before fingerprints): that their rows are the same samples in the same order
    cannot be checked. Unreadable paths are left to the sweep, which reports them."""
    from pathlib import Path

    from .features.provenance import provenance
    from .sweep import feature_files

    try:
        files = list(dict.fromkeys(p.resolve() for p in feature_files(x) + feature_files(against or [])))
        unknown = [f for f in files if provenance(f)["fingerprint"] is None]
    except (ValueError, TypeError, OSError):
        return
    if len(files) < 2 or not unknown:
        return
    shown = ", ".join(Path(f).name for f in unknown[:4]) + (f" and {len(unknown) - 4} more" if len(unknown) > 4
                                                             else "")
    print(f"warning: {shown} record{'s' if len(unknown) == 1 else ''} no sample fingerprint (.npy and .pt files, "
          "or files written before fingerprints): whether the files' rows are the same samples in the same order "
          "cannot be checked, and the scores are meaningless if they are not (platonic-fast extract records it)",
          file=sys.stderr)


def _set_threads(threads: int | None) -> None:
    """``--threads``: torch's intra-op threads, which the compiled core's OpenMP loops share."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


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


if __name__ == "__main__":
    sys.exit(main())
