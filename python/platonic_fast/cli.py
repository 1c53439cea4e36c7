"""The ``platonic-fast`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="platonic-fast", description="Fast, exact representational alignment.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the built-in offline demo")
    demo.add_argument("--n", type=int, default=4000, help="number of samples (default 4000)")
    demo.add_argument("--topk", type=int, default=10)
    demo.add_argument("--out", default="platonic_fast_demo", help="output folder for JSON and PNG")

    sub.add_parser("env", help="print what was built and which backends are usable here")

    meas = sub.add_parser(
        "measure",
        help="align a model set with a model set (feature files) -> scores JSON/NPZ + heat map",
        description="Every model of X against every model of Y (or X with itself): the best "
        "layer pair and its score. Finished pairs are saved as they complete; running the same "
        "command again resumes an interrupted sweep.",
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
    meas.add_argument("--no-progress", action="store_true")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        run(n=args.n, out_dir=args.out, topk=args.topk)
    elif args.command == "env":
        from .env import main as env_main

        env_main()
    elif args.command == "measure":
        from .sweep import measure_sets

        try:
            res = measure_sets(args.x, args.against, metric=args.metric, topk=args.topk, out_dir=args.out,
                               q=args.q, exact=args.exact, concat=args.concat, progress=not args.no_progress)
        except (ValueError, TypeError) as exc:
            parser.exit(2, f"platonic-fast measure: error: {exc}\n")
        width = max(len(n) for n in res.names_x)
        print(f"{res.metric} (best layer pair per model pair)")
        print(" " * width + "  " + "  ".join(f"{n[:10]:>10}" for n in res.names_y))
        for name, row in zip(res.names_x, res.scores):
            print(f"{name:<{width}}  " + "  ".join(f"{v:>10.4f}" for v in row))
        print("wrote " + ", ".join(str(p) for p in res.files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
