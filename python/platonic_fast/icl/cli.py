"""``platonic-fast icl train | eval | align | study``."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path


def add_parsers(sub, debug_parent) -> None:
    """Register ``icl`` and its subcommands on the main parser's subparsers."""
    icl = sub.add_parser(
        "icl", parents=[debug_parent],
        help="in-context learning from pretraining mixtures (Yadlowsky et al. 2023) and the models' alignment",
        description="Transformers pretrained on sequences (x1, f(x1), x2, f(x2), ...) with f drawn from a mixture "
        "of function classes: train them, evaluate them against least squares, Lasso, ridge, 3-NN, averaging and "
        "zero, align their hidden states. Function classes: dense, sparse(k=K), sine(lo=,hi=), combo(alpha=) "
        "(the convex combinations of dense and sine), relu(h=); mixtures as '0.5*dense + 0.5*sparse(k=2)'.",
    )
    cmds = icl.add_subparsers(dest="icl_command", required=True, metavar="{train,eval,align,gate,fair,converge,study}",
                              help="train: pretrain a model; eval: NSE curves; align: hidden-state alignment; "
                              "gate: does a sparse model beat least squares; fair: findings 1-2 over seeds; "
                              "converge: alignment to the truth against competence; study: all of them, end to end")

    def common(p):
        p.add_argument("--preset", default="cpu",
                       help="sizes: cpu (default), fair (d=8, 3x96, 24k steps: issue 21), fair-deep (6x64), "
                       "controls, or paper (d=20, 12x256, for a GPU)")
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
        p.add_argument("--threads", type=int, default=None,
                       help="torch CPU threads (default: every core; fewer on a shared machine)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")

    @contextmanager
    def command(name, help):
        """A subcommand: its own arguments in the with block, then the common ones (listed after them)."""
        p = cmds.add_parser(name, parents=[debug_parent], help=help)
        yield p
        common(p)

    with command("train", "pretrain one model (resumes from --out)") as tr:
        tr.add_argument("--mixture", default=None, help="e.g. dense, sparse(k=2), '0.5*dense + 0.5*sine' "
                        "(or --model)")
        tr.add_argument("--model", default=None, metavar="NAME[@R]",
                        help="one of the preset's models (mixture and seed from the preset); NAME@R is its R-th "
                        "further seed (seed + 100*R)")
        tr.add_argument("--out", default=None, help="folder of the checkpoint (running again resumes); "
                        "default results/icl-<preset>/<model> with --model")
        tr.add_argument("--steps", type=int, default=None, help="override the preset's steps")
        tr.add_argument("--seed", type=int, default=None,
                        help="seeds the weights and the training sequences (default: the preset model's seed, "
                        "else 0)")
        tr.add_argument("--lr", type=float, default=None, help="override the preset's peak learning rate")
        tr.add_argument("--batch-size", type=int, default=None, help="override the preset's sequences per step")
        tr.add_argument("--curriculum", default=None, metavar="D0,N0,EVERY",
                        help="start at dimension D0 and N0 points, +1 dimension and +2 points every EVERY steps")

    with command("eval", "NSE curves of checkpoints and baselines on tasks") as ev:
        ev.add_argument("checkpoints", nargs="+", help="checkpoint files or run folders")
        ev.add_argument("--task", action="append", required=True, help="a class or mixture spec (repeatable)")
        ev.add_argument("--count", type=int, default=1280, help="evaluation sequences per task (default 1280)")
        ev.add_argument("--baselines", nargs="*",
                        default=["least_squares", "ridge", "lasso", "knn3", "averaging", "zero"],
                        help="baselines to evaluate beside the models (default: least_squares ridge lasso knn3 "
                        "averaging zero; none: give the flag alone)")
        ev.add_argument("--out", default=None, help="write eval.json there")

    with command("align", "align checkpoints' hidden states on one bank of sequences (heat map + JSON)") as al:
        al.add_argument("checkpoints", nargs="+", help="checkpoint files or run folders (at least 2)")
        al.add_argument("--bank", default=None, help="mixture of the bank (default 1/3 dense, sparse, sine)")
        al.add_argument("--sequences", type=int, default=None, help="bank sequences (N = sequences x points)")
        al.add_argument("--metric", nargs="+", default=["mutual_knn", "cknna"],
                        help="alignment metrics, one result each (default: mutual_knn cknna)")
        al.add_argument("--topk", type=int, default=None,
                        help="neighbours for the kNN metrics (default: the preset's, 10)")
        al.add_argument("--permutations", type=int, default=None, help="row permutations of the null (0: none)")
        al.add_argument("--out", default="icl_align", help="output folder (default ./icl_align)")

    with command("gate",
                 "has a sparse specialist learned its class? (issue 21's gate; exit 0 pass, 1 fail)") as ga:
        ga.add_argument("checkpoint", help="a sparse specialist's checkpoint file or run folder")
        ga.add_argument("--count", type=int, default=512, help="evaluation sequences (default 512)")
        ga.add_argument("--share", type=float, default=0.5,
                        help="the share of the Lasso's gain over least squares the model must reach (default 0.5)")
        ga.add_argument("--json", default=None, help="also write the numbers there")

    with command("fair", "findings 1 and 2 over the fair preset's seeds (intervals over training seeds)") as ff:
        ff.add_argument("--root", default="results/icl-fair", help="the runs' folder (default results/icl-fair)")
        ff.add_argument("--count", type=int, default=None, help="evaluation sequences per task (default 1280)")
        ff.add_argument("--out", default=None, help="JSON output (default <root>/findings.json)")

    with command("converge",
                 "alignment to the true functions across every run's snapshots (the capability family)") as cv:
        cv.add_argument("--root", action="append", default=None,
                        help="a folder of runs (<run>/snapshots/step-*.safetensors); repeat it for several "
                             "(default results/icl-fair)")
        cv.add_argument("--per-class", type=int, default=100, help="functions per class in the fixed-query bank")
        cv.add_argument("--permutations", type=int, default=100,
                        help="row permutations of each alignment's null (the calibrated scores; default 100)")
        cv.add_argument("--trend-permutations", type=int, default=9999,
                        help="relabellings of checkpoints for the competence trends and Mantel tests (default 9999)")
        cv.add_argument("--out", default=None,
                        help="JSON output (default <root>/convergence.json; required with several --root)")
        cv.add_argument("--family-json", default=None,
                        help="keep the scores here; a rerun with the same snapshots and settings reads them back")
        cv.add_argument("--figure", default=None, help="PNG of the trends (default: beside the JSON)")

    with command("study", "train every model, evaluate the four findings, align; JSON and figures") as st:
        st.add_argument("--out", default="results/icl",
                        help="output folder (checkpoints in <out>/runs; default results/icl)")
        st.add_argument("--jobs", type=int, default=1, help="models trained at once, one process each")
        st.add_argument("--steps", type=int, default=None, help="override the preset's steps per model")
        st.add_argument("--eval-count", type=int, default=None, help="evaluation sequences per task")
        st.add_argument("--bank-sequences", type=int, default=None,
                        help="sequences in the alignment bank (N = sequences x points; default: the preset's)")
        st.add_argument("--permutations", type=int, default=None,
                        help="row permutations of the alignment null (default: the preset's; 0: none)")


def run(args) -> int:
    """Dispatch; a bad setting (found before any work starts) is a usage error: exit 2."""
    from ..features._cli import UsageError
    from .presets import get_preset

    try:
        preset = get_preset(args.preset)
        _check_settings(args, preset)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    progress = not args.no_progress
    if args.icl_command == "train":
        return _train(args, preset, progress)
    if args.icl_command == "eval":
        return _eval(args, preset)
    if args.icl_command == "align":
        return _align(args, preset)
    if args.icl_command == "gate":
        from .study import format_gate, sparse_gate, write_json

        g = sparse_gate(args.checkpoint, count=args.count, share=args.share, device=args.device)
        print(format_gate(g))
        if args.json:
            write_json(args.json, g)
        return 0 if g["passed"] else 1
    if args.icl_command == "converge":
        from .convergence import convergence_study, format_convergence
        from .plots import fig_convergence
        from .study import write_json

        roots = args.root or ["results/icl-fair"]
        if len(roots) > 1 and not args.out:
            raise UsageError("--out is required with several --root")
        try:
            res = convergence_study(roots, per_class=args.per_class, permutations=args.permutations,
                                    trend_permutations=args.trend_permutations, family_json=args.family_json)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        print(format_convergence(res))
        out = Path(args.out or Path(roots[0]) / "convergence.json")
        print(f"wrote {write_json(out, res)}")
        print(f"wrote {fig_convergence(res, args.figure or out.with_suffix('.png'))}")
        return 0
    if args.icl_command == "fair":
        from .study import fair_findings, write_json

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        res = fair_findings(args.root, eval_count=args.count)
        path = write_json(args.out or Path(args.root) / "findings.json", res)
        for key, v in res["over_seeds"].items():
            if key.endswith("minus_specialist"):
                print(f"{key}: {v['mean']:+.3f} [{v['lo']:+.3f}, {v['hi']:+.3f}] over {v['seeds']} seeds")
            elif key.startswith("f1_"):
                print(f"{key}: " + ", ".join(f"{m} {x['mean']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]"
                                             for m, x in v.items()))
        print(f"wrote {path}")
        return 0
    if args.icl_command == "study":
        from .study import run_study

        run_study(preset, args.out, jobs=args.jobs, device=args.device, threads=args.threads, steps=args.steps,
                  eval_count=args.eval_count, bank_sequences=args.bank_sequences, permutations=args.permutations,
                  progress=progress)
        return 0
    raise AssertionError(args.icl_command)


def _check_settings(args, preset) -> None:
    from .tasks import parse_mixture
    from .train import resolve_device

    resolve_device(args.device)
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be at least 1")
    if args.icl_command == "train":
        _train_config(args, preset).check(preset.model)
    elif args.icl_command == "eval":
        for task in args.task:
            parse_mixture(task)
        if args.count < 2:
            raise ValueError("--count must be at least 2")
    elif args.icl_command == "align" and args.bank:
        parse_mixture(args.bank)
    elif args.icl_command == "gate" and (args.count < 2 or not 0 < args.share <= 1):
        raise ValueError("icl gate needs --count >= 2 and 0 < --share <= 1")
    elif args.icl_command == "study" and args.jobs < 1:
        raise ValueError("--jobs must be at least 1")


def _resolve_model(args, preset):
    """(mixture, seed, out) of a train command: --model picks them from the preset."""
    from .presets import replica

    if (args.model is None) == (args.mixture is None):
        raise ValueError("icl train needs exactly one of --mixture and --model")
    if args.model is None:
        if args.out is None:
            raise ValueError("icl train --mixture needs --out")
        return args.mixture, 0 if args.seed is None else args.seed, args.out
    name, _, r = args.model.partition("@")
    try:
        r = int(r) if r else 0
    except ValueError:
        raise ValueError(f"--model takes NAME or NAME@R with R an integer, got {args.model!r}") from None
    run, mixture, seed = replica(preset, name, r)
    out = args.out or str(Path("results") / f"icl-{preset.name}" / run)
    return mixture, seed if args.seed is None else args.seed, out


def _train_config(args, preset):
    from .train import Curriculum

    mixture, seed, _ = _resolve_model(args, preset)
    cfg = preset.train_config(mixture, seed)
    changes = {}
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.lr is not None:
        changes["lr"] = args.lr
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.curriculum:
        try:
            d0, n0, every = (int(v) for v in args.curriculum.split(","))
        except ValueError:
            raise ValueError(f"--curriculum takes D0,N0,EVERY (three integers), got {args.curriculum!r}") from None
        changes["curriculum"] = Curriculum(d_start=d0, n_start=n0, every=every)
    return replace(cfg, **changes)


def _train(args, preset, progress) -> int:
    import sys
    import time

    from .train import train

    cfg = _train_config(args, preset)
    out = _resolve_model(args, preset)[2]

    def report(line):
        print(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + line, flush=True)

    report(f"training {cfg.mixture} (seed {cfg.seed}, preset {preset.name}) into {out}; "
           f"pid {__import__('os').getpid()}")
    res = train(preset.model, cfg, out, device=args.device, threads=args.threads, progress=progress,
                report=None if progress else report)
    sys.stdout.flush()
    last = res.history[-1][1] if res.history else float("nan")
    print(f"trained {cfg.mixture} to step {res.step} in {res.seconds:.0f} s (resumed from {res.resumed_from}); "
          f"last logged loss {last:.4f}; checkpoint {res.path}")
    return 0


def _load(paths, device):
    from .train import load_model

    models, mixtures, config = {}, {}, None
    for p in paths:
        model, info = load_model(p, device=device)
        path = Path(p)
        if path.is_file() and path.parent.name == "snapshots":   # <run>/snapshots/step-N: name it run@step-N
            name = f"{path.parent.parent.name}@{path.stem}"
        elif path.is_file():
            name = path.stem if path.stem != "checkpoint" else path.parent.name
        else:
            name = path.name
        if name in models:
            name = f"{name}#{len(models)}"
        if config is not None and info["model_config"].d != config.d:
            raise ValueError(f"{p}: d={info['model_config'].d}, but the first checkpoint has d={config.d}")
        config = config or info["model_config"]
        models[name] = model
        mixtures[name] = info["train_config"].mixture
    return models, mixtures, config


def _eval(args, preset) -> int:
    from . import evaluate as ev
    from .study import evaluate_task, write_json

    models, mixtures, config = _load(args.checkpoints, args.device)
    preset = replace(preset, model=config, eval_count=args.count)
    results = {"models": mixtures, "count": args.count, "tasks": {}}
    for task in args.task:
        res = evaluate_task(models, task, preset, baselines=tuple(args.baselines))
        idx = ev.bootstrap_indices(res["ys"].shape[0])
        names = [k for k in res["preds"] if not k.startswith(("ridge[", "lasso["))]
        curves = {name: ev.curve(ev.squared_errors(res["preds"][name], res["ys"]), idx=idx) for name in names}
        results["tasks"][task] = curves
        n = config.n_points
        show = sorted({1, config.d // 2, config.d, n - 1})
        print(f"{task}: NSE at " + ", ".join(f"{i} examples" for i in show))
        for name in names:
            print(f"  {name:>14}  " + "  ".join(f"{curves[name]['mean'][i]:.3f}" for i in show))
    if args.out:
        path = write_json(Path(args.out) / "eval.json", results)
        print(f"wrote {path}")
    return 0


def _align(args, preset) -> int:
    from .plots import fig_alignment
    from .study import bridge, write_json

    if len(args.checkpoints) < 2:
        raise ValueError("align needs at least two checkpoints")
    models, mixtures, config = _load(args.checkpoints, args.device)
    preset = replace(preset, model=config)
    out = bridge(models, mixtures, preset, bank=args.bank, sequences=args.sequences, metrics=tuple(args.metric),
                 topk=args.topk, permutations=args.permutations)
    folder = Path(args.out)
    write_json(folder / "align.json", out)
    fig_alignment({"bridge": out}, folder / "align.png")
    for metric, m in out["metrics"].items():
        print(f"{metric} (best layer pair):")
        names = out["models"]
        width = max(len(n) for n in names)
        for i, a in enumerate(names):
            print(f"  {a:>{width}}  " + "  ".join("  -  " if i == j else f"{m['best'][i][j]:.3f}"
                                                  for j in range(len(names))))
    print(f"wrote {folder / 'align.json'}, {folder / 'align.png'}")
    return 0


__all__ = ["add_parsers", "run", "argparse"]
