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

    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        run(n=args.n, out_dir=args.out, topk=args.topk)
    elif args.command == "env":
        from .env import main as env_main

        env_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
