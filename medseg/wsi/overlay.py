"""PNG overlays on slide thumbnails: tissue mask + tile grid, and attention heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.fsutil import atomic_path

__all__ = ["mask_grid_overlay", "heatmap_overlay", "draw_colour_bar", "save_png"]


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return Path(path)


def _boxes(coords: np.ndarray, extent_level0: float, scale: float, shape: tuple[int, int]) -> np.ndarray:
    """Tile boxes in thumbnail pixels ``(N, 4)`` = x0, y0, x1, y1 (exclusive), clipped."""
    b = np.empty((len(coords), 4), np.int64)
    b[:, 0] = np.floor(coords[:, 0] * scale)
    b[:, 1] = np.floor(coords[:, 1] * scale)
    b[:, 2] = np.ceil((coords[:, 0] + extent_level0) * scale)
    b[:, 3] = np.ceil((coords[:, 1] + extent_level0) * scale)
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, shape[1])
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, shape[0])
    return b


def mask_grid_overlay(thumb: np.ndarray, mask: np.ndarray, coords: np.ndarray, *, extent_level0: float,
                      scale: float) -> np.ndarray:
    """Thumbnail ``(H, W, 3)`` with tissue tinted green and tile outlines in blue.

    ``scale`` is thumbnail pixels per level-0 pixel; ``mask`` has the thumbnail's shape.
    """
    out = thumb.astype(np.float32).copy()
    m = mask.astype(bool)
    out[m] = 0.65 * out[m] + 0.35 * np.array([0, 200, 0], np.float32)
    out = out.round().astype(np.uint8)
    for x0, y0, x1, y1 in _boxes(coords, extent_level0, scale, thumb.shape[:2]):
        if x1 <= x0 or y1 <= y0:
            continue
        out[y0, x0:x1] = out[y1 - 1, x0:x1] = (30, 60, 220)
        out[y0:y1, x0] = out[y0:y1, x1 - 1] = (30, 60, 220)
    return out


def _colormap(v: np.ndarray) -> np.ndarray:
    """Blue (0) -> yellow -> red (1) ramp, ``(..., 3)`` uint8."""
    v = np.clip(v, 0, 1)[..., None]
    blue, yellow, red = (np.array(c, np.float32) for c in ((40, 60, 200), (250, 220, 40), (220, 30, 30)))
    lo = blue + (yellow - blue) * np.clip(v * 2, 0, 1)
    return np.where(v < 0.5, lo, yellow + (red - yellow) * np.clip(v * 2 - 1, 0, 1)).astype(np.uint8)


def draw_colour_bar(img: np.ndarray, label: str = "attention") -> np.ndarray:
    """Draw the heatmap's colour ramp with ``low``/``high`` and ``label`` in the bottom-left
    corner of ``img`` (in place, on a white box); the image keeps its size. Skipped on images
    too small to hold it (under 120 x 60 px)."""
    from PIL import Image, ImageDraw

    h, w = img.shape[:2]
    if w < 120 or h < 60:
        return img
    bw, bh, pad = min(200, w // 3), 10, 4
    box_h = bh + 2 * 12 + 2 * pad
    y0 = h - box_h - pad
    x0 = pad
    img[y0:y0 + box_h, x0:x0 + bw + 2 * pad] = 255
    ramp = _colormap(np.linspace(0, 1, bw))
    img[y0 + pad + 12:y0 + pad + 12 + bh, x0 + pad:x0 + pad + bw] = ramp[None]
    pil = Image.fromarray(img)
    d = ImageDraw.Draw(pil)
    d.text((x0 + pad, y0 + pad), label, fill=(0, 0, 0))
    d.text((x0 + pad, y0 + pad + 12 + bh + 1), "low", fill=(0, 0, 0))
    d.text((x0 + pad + bw - 24, y0 + pad + 12 + bh + 1), "high", fill=(0, 0, 0))
    img[...] = np.asarray(pil)
    return img


def heatmap_overlay(thumb: np.ndarray, coords: np.ndarray, scores: np.ndarray, *, extent_level0: float,
                    scale: float, alpha: float = 0.5, legend: str | None = None) -> np.ndarray:
    """Thumbnail with each tile coloured by its score (min-max normalised over the slide).

    Overlapping tiles are averaged; untiled areas keep the thumbnail. With ``legend`` (a label,
    e.g. ``"attention"``) a colour bar is drawn in the bottom-left corner; the size is unchanged.
    """
    h, w = thumb.shape[:2]
    acc = np.zeros((h, w), np.float64)
    cnt = np.zeros((h, w), np.float64)
    s = np.asarray(scores, np.float64)
    if s.size:
        rng = s.max() - s.min()
        s = (s - s.min()) / rng if rng > 0 else np.full_like(s, 0.5)
    for (x0, y0, x1, y1), v in zip(_boxes(coords, extent_level0, scale, (h, w)), s):
        acc[y0:y1, x0:x1] += v
        cnt[y0:y1, x0:x1] += 1
    covered = cnt > 0
    heat = _colormap(np.divide(acc, cnt, out=np.zeros_like(acc), where=covered)).astype(np.float32)
    out = thumb.astype(np.float32).copy()
    out[covered] = (1 - alpha) * out[covered] + alpha * heat[covered]
    out = out.round().astype(np.uint8)
    return draw_colour_bar(out, legend) if legend else out
