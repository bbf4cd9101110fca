"""``medseg`` entry point. Each verb lives in its own module exposing ``add_parser`` and ``run``.

Verb modules are imported lazily so ``medseg info`` does not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medseg.errors import MedsegError

# verb -> (module, one-line help). Later issues add verbs here.
VERBS: dict[str, tuple[str, str]] = {
    "info": ("medseg.cli.info", "print shape, spacing, orientation, dtype, range and labels of a volume"),
    "evaluate": ("medseg.cli.evaluate", "score predictions against references (Dice, IoU, HD95, NSD)"),
    "run": ("medseg.cli.run", "run a staged pipeline from a YAML config"),
    "fingerprint": ("medseg.cli.fingerprint", "analyse a data set and propose preprocessing (YAML)"),
    "plan": ("medseg.cli.plan", "plan an experiment for a data set: spacing, normalisation, patch, network, batch"),
    "train": ("medseg.cli.train", "train a segmentation model from a YAML config into a model bundle"),
    "find-best": ("medseg.cli.find_best", "choose between trained configurations and their ensembles on "
                  "out-of-fold Dice"),
    "predict": ("medseg.cli.predict",
                "segment volumes with a model bundle (resumable batch, outputs on the input grid)"),
    "export": ("medseg.cli.export", "copy a model bundle for shipping, weights stored as float16 or int8"),
    "wsi": ("medseg.cli.wsi", "whole slides: info, tile, features, train, predict"),
    "mil": ("medseg.cli.mil", "multiple-instance learning on bags of feature vectors (cross-validation)"),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object]:
    parser = argparse.ArgumentParser(prog="medseg", description="Medical image segmentation toolkit.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    # Import only the verb asked for (or all of them for --help).
    wanted = next((a for a in argv if not a.startswith("-")), None)
    verbs = [wanted] if wanted in VERBS else list(VERBS)
    for verb in VERBS:
        mod_name, help_text = VERBS[verb]
        if verb in verbs:
            mod = importlib.import_module(mod_name)
            p = sub.add_parser(verb, help=help_text, description=(mod.__doc__ or help_text).strip())
            mod.add_parser(p)
            p.set_defaults(_run=mod.run)
        else:
            sub.add_parser(verb, help=help_text)
    return parser, sub


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, _ = build_parser(argv)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from medseg.cli.signals import EXIT_TERMINATED, Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # a scheduler's SIGTERM stops cleanly, as Ctrl-C does
            return int(args._run(args) or 0)
    except MedsegError as exc:
        logging.getLogger("medseg").error("%s", exc)
        return 1
    except Terminated:
        logging.getLogger("medseg").error("terminated (SIGTERM); finished outputs are kept, re-run to resume")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        logging.getLogger("medseg").error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
