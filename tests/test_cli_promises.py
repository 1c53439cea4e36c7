"""What the command line promises: flags a metric does not take are errors, ``measure --threads``,
a progress bar that moves inside one model pair, help text on every ``icl`` option."""

import argparse

import numpy as np
import pytest
import torch

from platonic_fast.cli import main as cli_main

N = 64


@pytest.fixture()
def one_pair(tmp_path):
    g = np.random.default_rng(0)
    shared = g.standard_normal((N, 4))
    for name, layers in (("a", 3), ("b", 2)):
        feats = np.stack([shared @ g.standard_normal((4, 12)) + g.standard_normal((N, 12)) for _ in range(layers)],
                         axis=1).astype(np.float32)
        np.save(tmp_path / f"{name}.npy", feats)
    return tmp_path


def _exit_code(argv) -> int:
    try:
        return cli_main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def test_topk_for_a_metric_without_neighbours_is_an_error(one_pair, capsys):
    code = _exit_code(["measure", one_pair / "a.npy", "--against", one_pair / "b.npy", "--metric", "cka",
                       "--topk", "5", "--out", one_pair / "o", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--topk does not apply to --metric cka" in err and "mutual_knn" in err
    assert err.count("\n") == 1 and not (one_pair / "o").exists()


def test_threads_sets_the_cpu_threads(one_pair, capsys):
    before = torch.get_num_threads()
    try:
        assert _exit_code(["measure", one_pair / "a.npy", "--against", one_pair / "b.npy", "--metric", "cka",
                           "--threads", "1", "--out", one_pair / "o", "--no-progress"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    assert _exit_code(["measure", one_pair / "a.npy", "--threads", "0", "--out", one_pair / "o2"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_progress_moves_inside_a_single_pair(one_pair, capsys, monkeypatch):
    from platonic_fast import sweep

    seen = []
    real = sweep._stage_bar

    def spy(outer, total, desc):
        seen.append((desc.strip(), total))
        return real(outer, total, desc)

    monkeypatch.setattr(sweep, "_stage_bar", spy)
    assert _exit_code(["measure", one_pair / "a.npy", "--against", one_pair / "b.npy", "--topk", "5",
                       "--permutations", "7", "--out", one_pair / "o"]) == 0
    err = capsys.readouterr().err
    assert ("layers of a", 3) in seen and ("layers of b", 2) in seen and ("permutations", 7) in seen
    assert "  permutations:" in err and "/7" in err  # the stage bar itself was drawn
    seen.clear()
    assert _exit_code(["measure", one_pair / "a.npy", "--against", one_pair / "b.npy", "--topk", "5",
                       "--permutations", "7", "--out", one_pair / "o3", "--no-progress"]) == 0
    assert "permutations" not in capsys.readouterr().err


def _parsers(parser: argparse.ArgumentParser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_icl_option_and_subcommand_has_help(capsys):
    from platonic_fast import cli

    captured = {}

    def grab(self, *a, **k):
        captured["parser"] = self
        raise SystemExit(0)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse.ArgumentParser, "parse_args", grab)
        with pytest.raises(SystemExit):
            cli.main(["icl", "--help"])
    missing = []
    for path, parser in _parsers(captured["parser"]):
        if not path or path[0] != "icl":
            continue
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{' '.join(path)} {c.dest}" for c in action._choices_actions if not c.help]
            elif not action.help and action.dest != "help":
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_files_without_fingerprints_are_paired_with_a_warning(one_pair, capsys):
    from platonic_fast.features import Features

    assert _exit_code(["measure", one_pair / "a.npy", "--against", one_pair / "b.npy", "--topk", "5",
                       "--out", one_pair / "o", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "a.npy, b.npy record no sample fingerprint" in err and "cannot be checked" in err
    # Files that record their samples are checked instead: no warning.
    for name in ("a", "b"):
        Features(torch.from_numpy(np.load(one_pair / f"{name}.npy")), None,
                 {"model": name, "samples": {"fingerprint": "samples:v1:" + "0" * 64, "spec": {}}}).save(
            one_pair / f"{name}.safetensors")
    assert _exit_code(["measure", one_pair / "a.safetensors", "--against", one_pair / "b.safetensors", "--topk",
                       "5", "--out", one_pair / "o2", "--no-progress"]) == 0
    assert "fingerprint" not in capsys.readouterr().err
