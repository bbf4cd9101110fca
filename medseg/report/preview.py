"""A preview picture of one segmented case (``medseg predict --preview``): three orthogonal slices
(axial, coronal, sagittal) through the centre of the labels, the labels overlaid in their colours
(:func:`medseg.io.segments.label_color`) on the grey image, and a legend of the label names.

The volume is shown in the nearest anatomical orientation (its array axes permuted and flipped to
the closest RAS axes; an oblique acquisition is shown on its own planes), with the true voxel
aspect ratio, in radiological convention (the patient's right on the left of axial and coronal
views; anterior on the left of the sagittal view). The centre is the centre of mass of all
labelled voxels (the middle of the volume when nothing is labelled). The picture holds the case
id (the file or folder name), the label names and the views - no header data of the input.
Drawn with Pillow (fast to import and to draw: the preview adds little to a predict).
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


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)        # scalable (FreeType builds of Pillow)
    except (TypeError, ValueError, OSError):
        return ImageFont.load_default()


def _panel(img: np.ndarray, lab: np.ndarray, colors: Mapping[int, tuple[int, int, int]], dv: float, dh: float,
           scale: float) -> np.ndarray:
    """One view as RGB uint8: grey image, labels blended in, rows upward, ``scale`` pixels per mm."""
    from PIL import Image

    grey = (img * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    for v, c in colors.items():
        m = lab == v
        rgb[m] = (1 - ALPHA) * rgb[m] + ALPHA * np.asarray(c, dtype=np.float32)
    rgb = np.flipud(np.round(rgb).astype(np.uint8))           # row 0 at the bottom
    size = (max(1, int(round(lab.shape[1] * dh * scale))), max(1, int(round(lab.shape[0] * dv * scale))))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST))


def render_preview(label: Volume, image: Volume, names: Mapping[int, str], path: str | Path, *,
                   title: str = "", size: int = 256) -> Path:
    """Write the preview PNG of ``label`` over ``image`` (same grid) to ``path``, atomically; one
    scale (pixels per mm) for the three views, the longest side of the volume ``size`` pixels."""
    from PIL import Image, ImageDraw

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
    # (name, image slice, label slice, vertical spacing, horizontal spacing); R and A reversed: radiological
    views = [("axial", img[s][:, ::-1], lab[s][:, ::-1], sp[1], sp[2]),
             ("coronal", img[:, a][:, ::-1], lab[:, a][:, ::-1], sp[0], sp[2]),
             ("sagittal", img[:, :, r][:, ::-1], lab[:, :, r][:, ::-1], sp[0], sp[1])]
    scale = size / max(n * d for n, d in zip(lab.shape, sp))
    panels = [_panel(im, lb, colors, dv, dh, scale) for _, im, lb, dv, dh in views]
    height = max(p.shape[0] for p in panels)
    font, small = _font(16), _font(13)
    pad, top = 12, 48
    legend: list[tuple[tuple[int, int, int] | None, str]] = [(colors[v], f"{v}: {names.get(v, f'label {v}')}")
                                                             for v in present] or [(None, "no label found")]
    width = max(sum(p.shape[1] for p in panels) + pad * 4, 200 * min(len(legend), 4) + 2 * pad)
    rows = (len(legend) + 3) // 4
    canvas = Image.new("RGB", (width, top + height + pad + 24 * rows + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 8), title, fill="black", font=font)
    x = pad
    for (name, *_), p in zip(views, panels):
        draw.text((x, top - 20), name, fill="black", font=small)
        canvas.paste(Image.fromarray(p), (x, top))
        x += p.shape[1] + pad
    for i, (c, text) in enumerate(legend):
        lx, ly = pad + 200 * (i % 4), top + height + pad + 24 * (i // 4)
        if c is not None:
            draw.rectangle((lx, ly + 2, lx + 14, ly + 16), fill=tuple(c))
        draw.text((lx + 20, ly), text, fill="black", font=small)
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
