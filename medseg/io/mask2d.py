"""2D masks for evaluation: PNG / TIFF files (with a pixel spacing given by the user) and 2D NIfTI.

A 2D mask becomes a one-slice :class:`~medseg.volume.Volume` ``(1, y, x)`` marked
``meta["ndim"] = 2``, so that :func:`medseg.metrics.evaluate.evaluate_case` scores it with the 2D
definitions (contours, not surfaces). PNG and TIFF carry no reliable physical pixel size, so the
spacing ``(sy, sx)`` in mm must be given; a binary mask must hold 0 and at most one other value
(0/1 and 0/255 are both common); ``binary=False`` reads the values as label numbers.

Example
-------
>>> mask2d_case_id("masks/case_01.png")
'case_01'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.volume import Volume

MASK2D_EXT = (".png", ".tif", ".tiff")


def is_mask2d_file(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(MASK2D_EXT)


def mask2d_case_id(path: str | Path) -> str:
    name = Path(path).name
    for ext in MASK2D_EXT:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def list_masks2d(folder: str | Path) -> list[Path]:
    """PNG / TIFF files of a folder (sorted, hidden files skipped); ``[]`` for a file that is none."""
    p = Path(folder)
    if p.is_file():
        return [p] if is_mask2d_file(p) else []
    if not p.is_dir():
        return []
    return [c for c in sorted(p.iterdir()) if c.is_file() and not c.name.startswith(".") and is_mask2d_file(c)]


def _spacing(pixel_spacing_mm: Sequence[float] | None, path: Path) -> tuple[float, float]:
    if pixel_spacing_mm is None:
        raise InputError("a 2D mask (PNG/TIFF) has no reliable pixel spacing: give it, e.g. "
                         "--pixel-spacing-mm 0.5,0.5 (row, column spacing in mm)", path=path, code="no_spacing")
    sp = tuple(float(s) for s in pixel_spacing_mm)
    if len(sp) != 2 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"pixel spacing must be two positive numbers (mm), got {pixel_spacing_mm}", path=path,
                         code="bad_spacing")
    return sp[0], sp[1]


def read_mask2d(path: str | Path, *, pixel_spacing_mm: Sequence[float] | None, binary: bool = True) -> Volume:
    """Read a PNG / TIFF mask as a one-slice label volume ``(1, y, x)``.

    Raises InputError naming the file: no spacing (``no_spacing``), unreadable (``unreadable``),
    a colour image (``not_a_mask``), more than two values in a binary mask (``not_binary``),
    fractional or negative labels (``bad_labels``).
    """
    p = Path(path)
    sy, sx = _spacing(pixel_spacing_mm, p)
    from medseg.limits import open_image, require_regular_file

    require_regular_file(p)
    try:
        with open_image(p, what="mask image") as im:  # the caps of medseg.limits, before anything is decoded
            im.load()
            arr = np.asarray(im)
    except InputError:
        raise
    except Exception as exc:  # PIL raises many types for damaged files
        raise InputError(f"cannot read the image ({type(exc).__name__}: {exc})", path=p, code="unreadable") from None
    if arr.ndim == 3:
        if not all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(arr.shape[2], 3))):
            raise InputError(f"a colour image ({arr.shape[2]} channels that differ) is not a mask", path=p,
                             code="not_a_mask")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise InputError(f"expected a 2D mask, got shape {arr.shape}", path=p, code="not_a_mask")
    values = np.unique(arr)
    if binary:
        if values.size > 2 or (values.size == 2 and values[0] != 0):
            shown = ", ".join(str(v) for v in values[:6].tolist()) + (" ..." if values.size > 6 else "")
            raise InputError(f"holds {values.size} distinct values ({shown}) where a binary mask (0 and one "
                             "other value) is expected; read it as a label map to score each value",
                             path=p, code="not_binary")
        out = (arr != 0).astype(np.uint8)
    else:
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)) or values.min() < 0:
            raise InputError("label values must be whole numbers >= 0", path=p, code="bad_labels")
        out = arr.astype(np.uint16 if values.max() > 255 else np.uint8)
    return Volume(np.ascontiguousarray(out[None]), spacing_mm=(1.0, sy, sx), is_label=True,
                  meta={"path": str(p), "format": p.suffix.lower().lstrip("."), "ndim": 2})


def read_label_file(path: str | Path, *, pixel_spacing_mm: Sequence[float] | None = None,
                    binary_2d: bool = True) -> Volume:
    """A label map from any supported file: PNG / TIFF masks (2D, spacing required), 2D or 3D NIfTI,
    ITK files, DICOM folders (labels checked as :func:`medseg.io.read_volume` ``kind="label"``)."""
    if is_mask2d_file(path):
        return read_mask2d(path, pixel_spacing_mm=pixel_spacing_mm, binary=binary_2d)
    from medseg.io import read_volume

    return read_volume(path, kind="label", allow_2d=True)
