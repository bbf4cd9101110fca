"""What every verb shares: the argument parser, the ``--output`` option and the checks made before any work.

* :class:`MedsegParser`: no prefix abbreviations (``--outp`` is an error, not ``--output``),
  ``-v`` / ``-q`` on every (sub)command, defaults shown in ``--help``, and a one-line usage error that
  names an unknown option (with the closest known one) before complaining about a missing one;
  exit code 2.
* :func:`add_output`: ``--output`` with ``--out`` as its documented alias, on every verb.
* :func:`check_output_dir`, :func:`check_output_file`, :func:`check_input`: an output path that is
  an existing file (or a folder where a file is wanted), a folder that cannot be written, a missing
  input - a :class:`ConfigError` (exit 2) naming the option and the path, before data is loaded or
  a model built.

Option meanings shared by the verbs (documented in the README):

``--workers N``   parallel worker *processes or tasks over cases / slides* (evaluate: processes over
                  cases; wsi features / wsi predict: DataLoader worker processes reading tiles).
``--threads N``   CPU *threads* of one process (torch and resampling); default: torch's default.
``--device D``    where models run: ``auto`` (CUDA when available, else the CPU; the default
                  everywhere), ``cpu``, ``cuda`` or ``cuda:N``.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import re
from pathlib import Path
from typing import Any, NoReturn

from medseg.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
DEVICE_HELP = "where the model runs: auto (CUDA when available, else cpu), cpu, cuda or cuda:N"
def add_backend_arg(p: argparse.ArgumentParser, what: str = "network") -> None:
    """``--backend auto|torch|openvino`` (:mod:`medseg.inference.backends`), one spelling for every verb."""
    from medseg.device import BACKEND_CHOICES

    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help=f"what runs the {what}: openvino (CPU, float32, converted once and cached; needs pip install "
                        "'medseg[openvino]'), torch, or auto: OpenVINO on the CPU when installed, else PyTorch "
                        "(default: %(default)s)")


THREADS_HELP = ("CPU threads for the network and resampling (default: the cores not busy with other processes when "
                "the run starts, within this process's affinity and cgroup quota)")

_NUMBER = re.compile(r"^-\d|^-\.\d")
_counter = itertools.count()


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless it already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if ("default" in text.lower() or not action.option_strings or action.required
                or action.default in (None, argparse.SUPPRESS, False, [])
                or isinstance(action, (argparse._StoreTrueAction, argparse._CountAction))):
            return text
        return f"{text} (default: %(default)s)"


class MedsegParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the conventions of every medseg (sub)command (see the module doc)."""

    argv: list[str] = []   # the whole command line, so that an error can name an unknown option

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        n = next(_counter)   # one dest per parser: counts before and after the verb add up (see verbosity)
        self.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, dest=f"_verbose_{n}",
                          help="more output: per-case timings, debug messages with -vv (anywhere on the line)")
        self.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS, dest=f"_quiet_{n}",
                          help="less output: warnings and errors only, no progress (anywhere on the line)")
        self.set_defaults(_parser=self)

    def unknown_options(self) -> list[str]:
        """Options on the command line that this parser (the verb's own) does not know."""
        known = set(self._option_string_actions)
        out = []
        for tok in self.argv:
            if tok == "--":
                break
            if not tok.startswith("-") or tok == "-" or _NUMBER.match(tok):
                continue
            name = tok.split("=", 1)[0]
            if name in known or (not name.startswith("--") and name[:2] in known):
                continue
            out.append(name)
        return out

    def error(self, message: str) -> NoReturn:
        unknown = self.unknown_options()
        if unknown:
            # each option by its first long name (--output, not its alias --out)
            opts = [next(o for o in a.option_strings if o.startswith("--")) for a in self._actions
                    if any(o.startswith("--") for o in a.option_strings)]
            hints = []
            for u in unknown:
                close = [o for o in opts if len(u) > 3 and o.startswith(u)] or difflib.get_close_matches(
                    u, opts, n=1, cutoff=0.6)
                hints.append(f"{u} (did you mean {close[0]}?)" if close else u)
            message = f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(hints)}"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def verbosity(args: argparse.Namespace) -> int:
    """``-v`` count minus ``-q`` count, wherever on the command line they were given."""
    v = sum(val for k, val in vars(args).items() if k.startswith("_verbose_"))
    q = sum(val for k, val in vars(args).items() if k.startswith("_quiet_"))
    return int(v) - int(q)


def add_output(p: argparse.ArgumentParser, help: str, *, required: bool = True, default: Any = None) -> None:
    """``--output PATH`` (alias ``--out``) into ``args.output``."""
    p.add_argument("--output", "--out", dest="output", type=Path, required=required, default=default,
                   metavar="PATH", help=f"{help} (--out is an alias)")


def check_output_dir(path: str | Path | None, option: str = "--output") -> None:
    """A usable output folder (:func:`medseg.fsutil.check_output_dir`); ConfigError naming ``option``."""
    if path is not None:
        from medseg.fsutil import check_output_dir as check

        check(path, option)


def check_output_file(path: str | Path | None, option: str = "--output") -> None:
    """A usable output file: not a folder, and its folder exists or can be made and is writable."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{option} {p} is a folder; give a file name", code="output_is_folder")
    check_output_dir(p.parent if str(p.parent) else Path("."), option)


def check_input(path: str | Path | None, option: str, *, kind: str = "file or folder") -> None:
    """Raise :class:`ConfigError` (exit 2) when the input ``path`` given with ``option`` does not exist."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{option} {p} does not exist (expected a {kind})", code="missing_input")
    if kind == "folder" and not p.is_dir():
        raise ConfigError(f"{option} {p} is a file; expected a folder", code="not_a_folder")
