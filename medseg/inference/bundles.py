"""Model bundles by name: the bundles shipped inside the package, plus folders on ``MEDSEG_BUNDLES``.

``medseg predict --model NAME`` and the ``predict`` stage accept either a path to a bundle
folder (holding ``bundle.yaml``) or a registered name:

* ``medseg/bundles/<name>/`` inside the installed package (package data, so a non-editable
  install finds them too);
* ``<dir>/<name>/`` for every ``dir`` on the environment variable ``MEDSEG_BUNDLES``
  (``os.pathsep``-separated), so a site can add models.

A name never silently means another model than the user thinks: a plain name that is both a
registered bundle and a folder in the working directory, or that two of those places hold (a
``MEDSEG_BUNDLES`` folder named like a shipped bundle), is an error (code ``ambiguous_model``)
listing the candidates; give a path (``./hippocampus_unet``) to use a folder. ``medseg predict``
prints and records the folder it used and :func:`medseg.bundle.bundle_sha256`.

>>> sorted(registered_bundles())          # doctest: +SKIP
['hippocampus_unet']
"""

from __future__ import annotations

import os
from pathlib import Path

from medseg.bundle import META_FILE
from medseg.errors import InputError

PACKAGE_BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
ENV_VAR = "MEDSEG_BUNDLES"


def bundle_dirs() -> list[Path]:
    """Folders searched for named bundles, first match wins: ``$MEDSEG_BUNDLES`` entries, then the package's."""
    extra = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    return [*extra, PACKAGE_BUNDLES]


def registered_bundles() -> dict[str, Path]:
    """Name -> bundle folder of every bundle found in :func:`bundle_dirs` (sub-folders holding bundle.yaml);
    the first of several folders with one name (see :func:`bundle_candidates`)."""
    return {name: paths[0] for name, paths in bundle_candidates().items()}


def bundle_candidates() -> dict[str, list[Path]]:
    """Name -> every folder of :func:`bundle_dirs` holding a bundle of that name."""
    found: dict[str, list[Path]] = {}
    seen: set[Path] = set()
    for root in bundle_dirs():
        if not root.is_dir():
            continue
        for sub in sorted(root.iterdir()):
            if sub.is_dir() and not sub.name.startswith(".") and (sub / META_FILE).is_file():
                real = sub.resolve()
                if real not in seen:
                    seen.add(real)
                    found.setdefault(sub.name, []).append(sub)
    return found


def resolve_bundle(spec: str | os.PathLike) -> Path:
    """A bundle folder from a path or a registered name.

    A path (a ``Path``, or text with a separator or an extension) to an existing folder is used as is
    (it must hold ``bundle.yaml``; :func:`medseg.bundle.read_meta` says so otherwise). A plain name is
    looked up in :func:`bundle_candidates` and the working directory.

    Raises
    ------
    InputError (code ``unknown_model``) naming the known bundles when neither matches, and
    (code ``ambiguous_model``) when a plain name matches more than one folder.
    """
    p = Path(spec)
    name = str(spec)
    looks_like_path = os.sep in name or (os.altsep is not None and os.altsep in name) or p.suffix != ""
    candidates = bundle_candidates()
    if looks_like_path or isinstance(spec, Path):  # a path: used as given
        if p.is_dir():
            return p
    else:
        places = list(candidates.get(name, []))
        if p.is_dir() and p.resolve() not in {c.resolve() for c in places}:
            places.insert(0, p)
        if len(places) > 1:
            raise InputError(f"model name '{name}' is ambiguous: {len(places)} bundles have this name "
                             f"({'; '.join(str(c.absolute()) for c in places)}); give the folder as a path "
                             f"(e.g. ./{name} or {places[-1]}) or rename the other one", code="ambiguous_model")
        if places:
            return places[0]
    known = {n: ps[0] for n, ps in candidates.items()}
    where = ", ".join(str(d) for d in bundle_dirs())
    names = ", ".join(sorted(known)) or "none installed"
    if looks_like_path:
        raise InputError(f"no such model bundle folder (registered names: {names})", path=p, code="unknown_model")
    raise InputError(f"unknown model '{name}': not a bundle folder and not a registered name (registered: {names}; "
                     f"searched {where}; add folders with ${ENV_VAR})", code="unknown_model")
