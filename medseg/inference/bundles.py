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

:func:`check_meta` refuses a ``bundle.yaml`` that lacks what inference needs, before any case.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

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


def check_meta(meta: dict[str, Any], path: Any = None) -> None:
    """Raise InputError (code ``bad_bundle``) when bundle.yaml lacks what inference needs."""
    def bad(msg: str):
        return InputError(f"bundle.yaml: {msg}; the bundle is incomplete or from another tool - re-export it with "
                          "medseg train", path=path, code="bad_bundle")

    plan = meta.get("plan")
    if not isinstance(plan, dict):
        raise bad("no preprocessing 'plan'")
    from medseg.inference.prepare import plan_spacing

    sp = plan_spacing(plan)
    if sp is not None and (len(sp) != 3 or not all(math.isfinite(float(v)) for v in sp) or min(sp) <= 0):
        raise bad(f"plan spacing {sp} is not three positive numbers (z, y, x) mm")
    kw = meta["model"].get("kwargs", {})
    dims = int(kw.get("spatial_dims", 3))
    patch = meta.get("patch_size", plan.get("patch_size"))
    if not isinstance(patch, (list, tuple)) or len(patch) != dims or any(int(p) < 1 for p in patch):
        raise bad(f"patch_size {patch!r} must hold {dims} positive sizes for a {dims}D model")
    inf = meta.get("inference", {})
    axes = inf.get("tta_axes", []) if isinstance(inf, dict) else None
    if not isinstance(axes, list) or not all(type(a) is int and a in (0, 1, 2) for a in axes) \
            or len(set(axes)) != len(axes):
        raise bad(f"inference {inf!r} must be a mapping whose tta_axes are distinct axes of 0, 1, 2")
    if dims == 2 and meta.get("slice_axis") not in (None, 0, 1, 2):
        raise bad(f"slice_axis {meta['slice_axis']!r} must be 0 (z), 1 (y) or 2 (x)")
    labels = meta.get("labels")
    if not isinstance(labels, dict) or 0 not in labels:
        raise bad("'labels' must map label values (0 = background) to names")
    out_ch = kw.get("out_channels")
    if out_ch is not None and int(out_ch) != max(labels) + 1:
        raise bad(f"the model has {out_ch} output channels but labels go up to {max(labels)}")
    ch = meta.get("channels", kw.get("in_channels", 1))
    if kw.get("in_channels") is not None and int(kw["in_channels"]) != int(ch):
        raise bad(f"channels {ch} differs from the model's in_channels {kw['in_channels']}")
