"""Pictures for the evaluation report: three orthogonal slices through the largest error of a case,
the image in grey with the reference (green) and prediction (red) contours of one label.

The slices cross at the centre of the largest connected component of the label's error
(reference XOR prediction); without error, at the centre of the label (or of the image when the
label is absent from both). 2D cases get one panel.

Example
-------
>>> import numpy as np
>>> ref = np.zeros((5, 6, 7), bool); ref[1:4, 1:4, 1:4] = True
>>> pred = ref.copy(); pred[1:4, 1:4, 4:6] = True          # 18 extra voxels on the x side
>>> largest_error_point(ref, pred)
(2, 2, 4)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseg.report.writers import figure_png

GREEN, RED = "#2ca02c", "#d62728"


def largest_error_point(ref: np.ndarray, pred: np.ndarray) -> tuple[int, ...]:
    """Index of the voxel at the centre of the largest error component (see module doc)."""
    err = np.asarray(ref, bool) ^ np.asarray(pred, bool)
    target = err
    if not err.any():
        target = np.asarray(ref, bool) | np.asarray(pred, bool)
    if not target.any():
        return tuple(int(n // 2) for n in err.shape)
    lab, n = ndimage.label(target)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        target = lab == int(np.argmax(sizes))
    pts = np.argwhere(target)
    centre = pts.mean(axis=0)
    nearest = pts[np.argmin(((pts - centre) ** 2).sum(axis=1))]  # a voxel of the component itself
    return tuple(int(v) for v in nearest)


def _window(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def slices_png(image: np.ndarray | None, ref: np.ndarray, pred: np.ndarray, spacing_mm: Sequence[float], *,
               title: str = "", point: tuple[int, ...] | None = None) -> bytes:
    """PNG bytes: axial / coronal / sagittal slices (one panel for a 2D case) through ``point``
    (default :func:`largest_error_point`) with the reference and prediction contours.

    ``image`` may be ``None`` (contours on black); arrays are ``(z, y, x)`` or ``(y, x)``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    ref = np.asarray(ref, bool)
    pred = np.asarray(pred, bool)
    if point is None:
        point = largest_error_point(ref, pred)
    img = np.zeros(ref.shape, np.float32) if image is None else np.asarray(image, np.float32)
    lo, hi = _window(img)
    sp = [float(s) for s in spacing_mm]
    views: list[tuple[str, tuple, float]]
    if ref.ndim == 2:
        views = [("slice", (slice(None), slice(None)), sp[0] / sp[1])]
    else:
        z, y, x = point
        views = [(f"axial z={z}", (z, slice(None), slice(None)), sp[1] / sp[2]),
                 (f"coronal y={y}", (slice(None), y, slice(None)), sp[0] / sp[2]),
                 (f"sagittal x={x}", (slice(None), slice(None), x), sp[0] / sp[1])]
    fig = Figure(figsize=(3.2 * len(views), 3.4), dpi=90)
    for i, (name, idx, aspect) in enumerate(views):
        ax = fig.add_subplot(1, len(views), i + 1)
        ax.imshow(img[idx], cmap="gray", vmin=lo, vmax=hi, aspect=aspect, origin="lower", interpolation="nearest")
        for mask, colour in ((ref, GREEN), (pred, RED)):
            sl = mask[idx].astype(np.float32)
            if sl.any() and not sl.all():
                ax.contour(sl, levels=[0.5], colors=[colour], linewidths=1.2, origin="lower")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(f"{title}  (reference green, prediction red)", fontsize=9)
    return figure_png(fig)
