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
    "wsi": ("medseg.cli.wsi", "whole slides: info, tile, features, train, predict, evaluate"),
    "mil": ("medseg.cli.mil", "multiple-instance learning on bags of feature vectors (cross-validation)"),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object]:
    from medseg import __version__
    from medseg.cli.common import MedsegParser

    MedsegParser.argv = list(argv)
    parser = MedsegParser(prog="medseg", description="Medical image segmentation toolkit. Exit codes: 0 all done, "
                          "1 some cases failed (the others finished), 2 usage or config error, 130 interrupted "
                          "(Ctrl-C), 143 terminated (SIGTERM).")
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
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


def _configure_logging(verbosity: int) -> None:
    """-q: warnings and errors (-qq: errors); default: progress and results; -v: medseg's debug messages
    and timings; -vv: every library's debug messages too."""
    level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.INFO}.get(verbosity, logging.ERROR if verbosity < 0
                                                                        else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("medseg").setLevel(logging.DEBUG if verbosity >= 1 else logging.NOTSET)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, _ = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from medseg.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, verbosity

    args.verbosity = verbosity(args)
    _configure_logging(args.verbosity)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    from medseg.cli.signals import EXIT_TERMINATED, Terminated, sigterm_as_interrupt
    from medseg.errors import ConfigError

    log = logging.getLogger("medseg")
    try:
        with sigterm_as_interrupt():  # a scheduler's SIGTERM stops cleanly, as Ctrl-C does
            return int(args._run(args) or 0)
    except ConfigError as exc:  # a bad option, config key or output path: nothing was done
        log.error("%s", exc)
        return EXIT_USAGE
    except MedsegError as exc:
        log.error("%s", exc)
        return EXIT_FAILED
    except Terminated:
        log.error("terminated (SIGTERM); finished outputs are kept, re-run to resume")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:  # a file system refusal no check foresaw: one line, not a traceback
        log.error("%s", exc)
        log.debug("details", exc_info=True)
        return EXIT_FAILED
    except Exception as exc:  # a bug: one line by default, the traceback with -v
        log.error("internal error %s: %s (run again with -v for the traceback; please report it)",
                  type(exc).__name__, exc)
        if args.verbosity > 0:
            log.exception("traceback")
        return EXIT_FAILED


def cli() -> None:
    """The ``medseg`` command (console script and ``python -m medseg``): :func:`main`, then :func:`exit_now`."""
    exit_now(main())


def exit_now(code: int) -> None:
    """End the process with ``code`` as a normal exit would, without the module-by-module teardown of
    the interpreter (0.25-0.3 s of every command once torch and OpenVINO are loaded, measured): the
    non-daemon threads are joined and every exit handler runs (logging, temporary folders, Ray,
    multiprocessing), the streams are flushed, then the process ends. ``MEDSEG_SLOW_EXIT=1`` (or a
    Python without ``threading._shutdown``) exits the usual way."""
    import atexit
    import os
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None or os.environ.get("MEDSEG_SLOW_EXIT"):
        sys.exit(code)
    try:
        shutdown()                  # what the interpreter does first at exit: join the non-daemon threads
        atexit._run_exitfuncs()     # then the exit handlers, in reverse order of registration
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - e.g. a closed pipe: the ordinary exit reports it
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    cli()
