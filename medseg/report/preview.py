"""A preview picture of one segmented case (``medseg predict --preview``): three orthogonal slices
(axial, coronal, sagittal) through the centre of the labels, the labels overlaid in their colours
(:func:`medseg.io.segments.label_color`) on the grey image, and a legend of the label names.

The volume is shown in the nearest anatomical orientation (its array axes permuted and flipped to
the closest RAS axes; an oblique acquisition is shown on its own planes), with the true voxel
aspect ratio, in radiological convention (the patient's right on the left of axial and coronal
views; anterior on the left of the sagittal view). The centre is the centre of mass of all
labelled voxels (the middle of the volume when nothing is labelled). The picture holds the case
id (the file or folder name), the label names and the views - no header data of the input.
Drawn with matplotlib's Agg canvas (no pyplot state: safe in the writer thread).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medseg.volume import Volume

ALPHA = 0.45


def _to_ras_axes(arr: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """``arr`` (z, y, x) permuted/flipped to (S, A, R) order; also the source axis of each output axis."""
    d = np.abs(np.asarray(direction))
    order = [0, 0, 0]
    free = [0, 1, 2]
    for world in (2, 1, 0):                              # S, A, R: pick the array axis closest to each
        ax = max(free, key=lambda a: d[world, a])
        free.remove(ax)
        order[2 - world] = ax
    out = np.transpose(arr, order)
    for i, ax in enumerate(order):
        if direction[2 - i, ax] < 0:
            out = np.flip(out, axis=i)
    return out, order


def _window(img: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(img, [0.5, 99.5]) if img.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((img.astype(np.float32) - lo) / (hi - lo), 0, 1)


def _overlay(lab: np.ndarray, colors: Mapping[int, tuple[int, int, int]]) -> np.ndarray:
    rgba = np.zeros(lab.shape + (4,), dtype=np.float32)
    for v, c in colors.items():
        m = lab == v
        rgba[m, :3] = np.asarray(c, dtype=np.float32) / 255
        rgba[m, 3] = ALPHA
    return rgba


def render_preview(label: Volume, image: Volume, names: Mapping[int, str], path: str | Path, *,
                   title: str = "", dpi: int = 100) -> Path:
    """Write the preview PNG of ``label`` over ``image`` (same grid) to ``path``, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from medseg.fsutil import atomic_path
    from medseg.io.segments import label_color

    if label.shape != image.shape:
        raise ValueError(f"label map {label.shape} and image {image.shape} are not on one grid")
    lab, order = _to_ras_axes(np.asarray(label.array), label.direction)
    img, _ = _to_ras_axes(np.asarray(image.array), label.direction)
    sp = [label.spacing_mm[a] for a in order]            # spacing of the S, A, R axes
    fg = np.argwhere(lab > 0)
    centre = fg.mean(axis=0).round().astype(int) if len(fg) else np.array(lab.shape) // 2
    img = _window(img)
    present = [int(v) for v in np.unique(lab) if v > 0]
    colors = {v: label_color(v) for v in present}
    s, a, r = (int(c) for c in centre)
    # (slice image, label slice, vertical spacing, horizontal spacing); rows upward with origin="lower"
    views = [("axial", img[s][:, ::-1], lab[s][:, ::-1], sp[1], sp[2]),
             ("coronal", img[:, a][:, ::-1], lab[:, a][:, ::-1], sp[0], sp[2]),
             ("sagittal", img[:, :, r][:, ::-1], lab[:, :, r][:, ::-1], sp[0], sp[1])]
    fig = Figure(figsize=(10, 4), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (name, im, lb, dv, dh) in zip(axes, views):
        ax.imshow(im, cmap="gray", origin="lower", aspect=dv / dh, interpolation="nearest", vmin=0, vmax=1)
        ax.imshow(_overlay(lb, colors), origin="lower", aspect=dv / dh, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    handles = [Patch(facecolor="#" + "".join(f"{c:02x}" for c in colors[v]),
                     label=f"{v}: {names.get(v, f'label {v}')}") for v in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    else:
        fig.text(0.5, 0.03, "no label found", ha="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path
