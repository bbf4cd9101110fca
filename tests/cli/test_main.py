"""The command line's conventions: the README's commands parse as written, every option has help text
and shows its default, no option is abbreviated, -v/-q count anywhere."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from medseg.cli.common import verbosity
from medseg.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text("utf-8")
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "medseg" in words:
                cmds.append(words[words.index("medseg") + 1:])
    return cmds


def _parsers(p: argparse.ArgumentParser):
    yield p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                yield from _parsers(sp)


def test_every_readme_command_parses_with_the_cli():
    cmds = _readme_commands()
    assert len(cmds) >= 20
    verbs = set()
    for argv in cmds:
        parser, _ = build_parser(argv)
        try:
            args, extra = parser.parse_known_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: medseg {' '.join(argv)}")
        assert not extra, f"README command has options the CLI does not know: medseg {' '.join(argv)}: {extra}"
        verbs.add(args.verb)
    # every verb of the CLI has an example in the README
    from medseg.cli.main import VERBS

    assert verbs >= set(VERBS) - {"find-best", "export", "plan"} and {"plan", "train", "predict"} <= verbs


def test_every_option_has_help_and_shows_its_default():
    parser, _ = build_parser([])
    n = 0
    for p in _parsers(parser):
        assert p.allow_abbrev is False, p.prog
        fmt = p._get_formatter()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction) or a.help == argparse.SUPPRESS:
                continue
            n += 1
            assert a.help, f"{p.prog} {a.option_strings or a.dest}: no help text"
            shown = fmt._expand_help(a) if a.option_strings else a.help
            if a.option_strings and a.default not in (None, False, argparse.SUPPRESS, []) and not a.required:
                assert "default" in shown.lower(), f"{p.prog} {a.option_strings}: default {a.default!r} not shown"
    assert n > 100


def test_verbosity_counts_before_and_after_the_verb():
    argv = ["-v", "evaluate", "--pred", "p", "--ref", "r", "--out", "o", "-vv", "-q"]
    parser, _ = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    assert not extra and args.output == Path("o")      # --out is --output
    assert verbosity(args) == 2


def _args(argv):
    parser, _ = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    assert not extra
    return args


def test_device_defaults_to_auto_and_threads_are_threads():
    assert _args(["mil", "cv", "--data", "d", "--output", "o"]).device == "auto"
    assert _args(["predict", "--model", "m", "--input", "i", "--output", "o"]).device == "auto"
    assert _args(["wsi", "predict", "--model", "m", "--input", "i", "--output", "o"]).device == "auto"
    assert _args(["plan", "--dataset", "d"]).device == "auto"
    a = _args(["predict", "--model", "m", "--input", "i", "--output", "o", "--threads", "2"])
    assert a.threads == 2 and a.threads_old is None


def test_predict_workers_is_a_deprecated_spelling_of_threads(tmp_path, caplog):
    """predict took CPU threads as --workers; it still works, with a warning naming --threads."""
    import logging

    from medseg.cli.main import main
    from tests.inference.helpers import blob_cohort, make_bundle

    src = blob_cohort(tmp_path / "in", 1)
    bundle = make_bundle(tmp_path / "b")
    with caplog.at_level(logging.WARNING):
        assert main(["predict", "--model", str(bundle), "--input", str(src), "--output", str(tmp_path / "o"),
                     "--workers", "1", "--no-progress", "--device", "cpu"]) == 0
    assert "use --threads" in caplog.text


def test_abbreviations_are_refused_and_unknown_options_named(capsys):
    from medseg.cli.main import main

    for argv, needle in [(["predict", "--model", "m", "--input", "i", "--outp", "o"],
                          "--outp (did you mean --output?)"),
                         (["evaluate", "--pred", "p", "--ref", "r", "--output", "o", "--label-name", "1=a"],
                          "--label-name (did you mean --label-names?)")]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err


def test_run_exits_1_and_lists_the_cases_a_stage_failed(tmp_path, capsys):
    import numpy as np

    from medseg import config as cfgmod
    from medseg.cli.main import main
    from tests.inference.helpers import blob_image, save_nifti

    src = tmp_path / "in"
    src.mkdir()
    save_nifti(blob_image((8, 8, 8)), src / "good.nii.gz", np.eye(4))
    (src / "bad.nii.gz").write_bytes(b"not a volume")
    cfg = tmp_path / "c.yaml"
    cfgmod.save_yaml({"output": str(tmp_path / "out"), "stages": [{"stage": "zscore", "params": {"input": str(src)}}]},
                     cfg)
    assert main(["run", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "zscore: 1 failed: bad (error:" in out
    assert (tmp_path / "out" / "zscore" / "good.nii.gz").is_file()      # the others finished
