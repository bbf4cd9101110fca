"""Model bundles by name: the bundles shipped inside the package, plus folders on ``MEDSEG_BUNDLES``.

``medseg predict --model NAME`` and the ``predict`` stage accept either a path to a bundle
folder (holding ``bundle.yaml``) or a registered name:

* ``medseg/bundles/<name>/`` inside the installed package (package data, so a non-editable
  install finds them too);
* ``<dir>/<name>/`` for every ``dir`` on the environment variable ``MEDSEG_BUNDLES``
  (``os.pathsep``-separated), searched first, so a site can add or override models.

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
    """Name -> bundle folder of every bundle found in :func:`bundle_dirs` (sub-folders holding bundle.yaml)."""
    found: dict[str, Path] = {}
    for root in bundle_dirs():
        if not root.is_dir():
            continue
        for sub in sorted(root.iterdir()):
            if sub.is_dir() and not sub.name.startswith(".") and (sub / META_FILE).is_file():
                found.setdefault(sub.name, sub)
    return found


def resolve_bundle(spec: str | os.PathLike) -> Path:
    """A bundle folder from a path or a registered name.

    A path to an existing folder is used as is (it must hold ``bundle.yaml``; :func:`medseg.bundle.read_meta`
    says so otherwise). A plain name is looked up in :func:`registered_bundles`.

    Raises
    ------
    InputError (code ``unknown_model``) naming the known bundles when neither matches.
    """
    p = Path(spec)
    if p.is_dir():
        return p
    name = str(spec)
    known = registered_bundles()
    if name in known:
        return known[name]
    looks_like_path = os.sep in name or (os.altsep is not None and os.altsep in name) or p.suffix != ""
    where = ", ".join(str(d) for d in bundle_dirs())
    names = ", ".join(sorted(known)) or "none installed"
    if looks_like_path:
        raise InputError(f"no such model bundle folder (registered names: {names})", path=p, code="unknown_model")
    raise InputError(f"unknown model '{name}': not a bundle folder and not a registered name (registered: {names}; "
                     f"searched {where}; add folders with ${ENV_VAR})", code="unknown_model")
