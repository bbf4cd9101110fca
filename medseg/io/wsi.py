"""Whole-slide images: OpenSlide formats, plain images and arrays, read by resolution (um/px).

``open_slide(path)`` opens any OpenSlide format (SVS, NDPI, MRXS, SCN, pyramidal TIFF...; the
``openslide-python`` and ``openslide-bin`` packages are imported only here, lazily) and falls
back to a *virtual single-level slide* for plain TIFF/PNG/JPEG; :class:`ArraySlide` wraps a numpy
array the same way (tests, exported images). Coordinates are level-0 pixels ``(x, y)``; reads
are addressed by resolution: :meth:`Slide.read_mpp` picks the finest pyramid level that is not
finer than needed and resizes to the asked um/px.

A slide without resolution metadata raises ``InputError(code="no_mpp")`` unless ``mpp`` is
given. Only technical metadata (levels, mpp, objective power, vendor, associated image names)
is exposed: free-text fields that may hold user or patient names are never logged.

>>> import numpy as np
>>> s = ArraySlide(np.zeros((100, 200, 3), np.uint8), mpp=0.5)
>>> s.dimensions, s.read_mpp((0, 0), (50, 25), mpp=2.0).shape
((200, 100), (25, 50, 3))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io.slide_checks import check_mpp, check_pyramid

__all__ = ["Slide", "ArraySlide", "OpenSlideSlide", "open_slide", "slide_id", "slide_ids", "check_mpp",
           "check_pyramid", "check_level_content", "SLIDE_EXTENSIONS"]

OPENSLIDE_EXT = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".tif", ".tiff",
                 ".dcm")
PLAIN_EXT = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SLIDE_EXTENSIONS = tuple(sorted(set(OPENSLIDE_EXT + PLAIN_EXT)))
MPP_TOLERANCE = 0.02  # relative; resolutions this close count as equal
_HINT = "install the slide extras: pip install 'medseg[wsi]' (openslide-python and openslide-bin)"


LEVEL_PROBE_PX = 256       # side of the region read per level by check_level_content
LEVEL_CONTENT_TOL = 60.0   # mean absolute difference (0..255) of 8 x 8 summaries that marks a level as damaged


def check_level_content(slide: Slide, *, path: str | Path | None = None) -> None:
    """Cheap content check across pyramid levels: one central region (at most
    :data:`LEVEL_PROBE_PX` px per level) is read from every level and from the coarsest, both are
    reduced to 8 x 8 colour summaries and compared; a level whose summary differs by more than
    :data:`LEVEL_CONTENT_TOL` grey levels on average (e.g. replaced by a black image of the right
    size) raises ``InputError(code="damaged_pyramid")``. Reads at most 1024 x 1024 px per level.
    Only the central region is compared: damage elsewhere in a level is not seen."""
    n = slide.level_count
    if n < 2:
        return
    w0, h0 = slide.dimensions
    last = n - 1
    ds_last = slide.level_downsamples[last]
    for i in range(last):
        ds = slide.level_downsamples[i]
        # at least 8 px of the coarsest level, at most 4 x LEVEL_PROBE_PX px of this one
        extent = int(min(max(LEVEL_PROBE_PX * ds, 8 * ds_last), 4 * LEVEL_PROBE_PX * ds, w0, h0))
        if extent < 8 * ds_last:
            continue  # the slide is too small at the coarsest level to compare
        x, y = (w0 - extent) // 2, (h0 - extent) // 2
        side_i = max(8, int(round(extent / ds)))
        side_c = max(1, int(round(extent / ds_last)))
        fine = resize_rgb(slide.read_level((x, y), i, (side_i, side_i)), (8, 8)).astype(np.float32)
        coarse = resize_rgb(slide.read_level((x, y), last, (side_c, side_c)), (8, 8)).astype(np.float32)
        diff = float(np.abs(fine - coarse).mean())
        if diff > LEVEL_CONTENT_TOL:
            raise InputError(f"pyramid level {i} does not show what level {last} shows over the same region (mean "
                             f"difference {diff:.0f} of 255): a damaged or replaced level", path=path,
                             code="damaged_pyramid")


def slide_id(path: str | Path) -> str:
    """Slide name without extension, safe as a folder name (:func:`medseg.fsutil.sanitize_name`)."""
    from medseg.fsutil import sanitize_name

    return sanitize_name(Path(path).stem)


def slide_ids(paths: list) -> list[str]:
    """:func:`slide_id` of each slide, collision-free (:func:`medseg.fsutil.unique_names`)."""
    from medseg.fsutil import unique_names

    return unique_names([Path(p).stem for p in paths])


@dataclass
class Slide:
    """Common interface. Subclasses implement :meth:`read_level`.

    Attributes: ``level_dimensions`` [(width, height)] per level, ``level_downsamples``,
    ``mpp`` (um per level-0 pixel, square pixels assumed: the mean of x and y), ``objective_power``,
    ``vendor``, ``path``.
    """

    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: float
    objective_power: float | None = None
    vendor: str = "unknown"
    path: str = "<array>"

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def associated_images(self) -> dict[str, tuple[int, int]]:
        return {}

    def read_level(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 ``(h, w, 3)`` of ``size=(w, h)`` pixels of ``level`` whose top-left is the
        level-0 pixel ``location=(x, y)``. Outside the slide reads as white."""
        raise NotImplementedError

    def best_level(self, mpp: float) -> int:
        """Finest-resolution level needed for ``mpp``: the coarsest level still at least that fine."""
        want = mpp / self.mpp
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= want * (1 + 1e-3):
                best = i
        return best

    def read_mpp(self, location: tuple[int, int], size: tuple[int, int], *, mpp: float) -> np.ndarray:
        """RGB uint8 ``(h, w, 3)`` of ``size=(w, h)`` pixels at ``mpp`` um/px, top-left at level-0
        ``location=(x, y)``; reads the best pyramid level and resizes (area-weighted)."""
        if mpp <= 0:
            raise ValueError(f"mpp must be > 0, got {mpp}")
        level = self.best_level(mpp)
        scale = mpp / (self.mpp * self.level_downsamples[level])  # level px per output px
        if abs(scale - 1.0) <= MPP_TOLERANCE:  # 0.499 vs 0.5 um/px: read natively, no resampling
            scale = 1.0
        w_l = max(1, int(math.ceil(size[0] * scale - 1e-6)))
        h_l = max(1, int(math.ceil(size[1] * scale - 1e-6)))
        region = self.read_level(location, level, (w_l, h_l))
        if (w_l, h_l) == tuple(size):
            return region
        return resize_rgb(region, size)

    def thumbnail(self, *, mpp: float) -> np.ndarray:
        """The whole slide at ``mpp`` um/px, RGB uint8 ``(H, W, 3)``."""
        w0, h0 = self.dimensions
        f = self.mpp / mpp
        size = (max(1, int(round(w0 * f))), max(1, int(round(h0 * f))))
        return self.read_mpp((0, 0), size, mpp=mpp)

    def info(self) -> dict[str, Any]:
        return {
            "path": self.path, "vendor": self.vendor, "mpp": self.mpp, "objective_power": self.objective_power,
            "dimensions": list(self.dimensions),
            "levels": [{"level": i, "width": w, "height": h, "downsample": round(ds, 4),
                        "mpp": round(self.mpp * ds, 5)}
                       for i, ((w, h), ds) in enumerate(zip(self.level_dimensions, self.level_downsamples))],
            "associated_images": {k: list(v) for k, v in self.associated_images().items()},
        }

    def close(self) -> None:
        pass


def resize_rgb(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(h, w, 3)`` uint8 to ``size=(w, h)`` (box filter when shrinking, bilinear otherwise)."""
    from PIL import Image

    pil = Image.fromarray(img)
    shrink = size[0] < img.shape[1]
    out = pil.resize(size, Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR)
    return np.asarray(out)


class ArraySlide(Slide):
    """A numpy RGB (or grey) image as a single-level virtual slide at ``mpp`` um/px."""

    def __init__(self, array: np.ndarray, *, mpp: float, path: str = "<array>", vendor: str = "array"):
        a = np.asarray(array)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise InputError(f"an image slide must be (H, W), (H, W, 3) or (H, W, 4); got {a.shape}", path=path,
                             code="bad_shape")
        if a.dtype != np.uint8:
            if np.issubdtype(a.dtype, np.floating) and a.size and float(np.nanmax(a)) <= 1.0:
                a = a * 255.0
            a = np.clip(a, 0, 255).astype(np.uint8)
        if mpp is None:
            raise InputError("this image has no resolution; give --mpp (um per pixel)", path=path, code="no_mpp")
        mpp = check_mpp(mpp, what="the image resolution (mpp)", path=path)
        self.array = np.ascontiguousarray(a[..., :3])
        h, w = self.array.shape[:2]
        super().__init__([(w, h)], [1.0], float(mpp), None, vendor, path)

    def read_level(self, location, level, size):
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = self.array.shape[:2]
        xs, ys = max(x, 0), max(y, 0)
        xe, ye = min(x + w, W), min(y + h, H)
        if xe > xs and ye > ys:
            out[ys - y:ye - y, xs - x:xe - x] = self.array[ys:ye, xs:xe]
        return out


class OpenSlideSlide(Slide):
    """A slide opened with OpenSlide."""

    def __init__(self, handle: Any, *, path: str, mpp: float):
        props = handle.properties
        obj = props.get("openslide.objective-power")
        super().__init__([tuple(map(int, d)) for d in handle.level_dimensions],
                         [float(d) for d in handle.level_downsamples], float(mpp),
                         float(obj) if obj not in (None, "") else None, props.get("openslide.vendor", "unknown"),
                         path)
        self._h = handle

    def associated_images(self):
        props = self._h.properties
        out = {}
        for name in self._h.associated_images.keys():
            w = props.get(f"openslide.associated.{name}.width")
            h = props.get(f"openslide.associated.{name}.height")
            out[name] = (int(w), int(h)) if w and h else (0, 0)
        return out

    def read_level(self, location, level, size):
        try:
            img = self._h.read_region((int(location[0]), int(location[1])), int(level), (int(size[0]), int(size[1])))
        except Exception as exc:  # openslide raises its own OpenSlideError for corrupt tiles
            raise InputError(f"cannot read region {location} at level {level}: {exc}", path=self.path,
                             code="read_failed") from None
        a = np.asarray(img)
        rgb = a[..., :3].astype(np.float32)
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        return (rgb * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)  # transparent -> white

    def close(self):
        self._h.close()


def _openslide():
    try:
        import openslide
    except ImportError as exc:
        raise InputError(f"OpenSlide is not available ({exc}); {_HINT}", code="missing_dependency") from None
    return openslide


def open_slide(path: str | Path, *, mpp: float | None = None) -> Slide:
    """Open a slide file. ``mpp`` overrides (or supplies missing) resolution metadata, in um/px."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such slide file", path=p, code="missing")
    from medseg.limits import require_regular_file

    require_regular_file(p, what="slide file")
    if mpp is not None:
        mpp = check_mpp(mpp, what="the given slide mpp (--slide-mpp / --mpp)", path=p)
    if p.stat().st_size == 0:
        raise InputError("slide file is empty", path=p, code="truncated")
    suffix = p.suffix.lower()
    if suffix in OPENSLIDE_EXT:
        osl = _openslide()
        try:
            handle = osl.OpenSlide(str(p))
        except osl.OpenSlideUnsupportedFormatError:
            handle = None
        except osl.OpenSlideError as exc:
            raise InputError(f"OpenSlide cannot read this slide (corrupt or truncated?): {exc}", path=p,
                             code="unreadable") from None
        if handle is not None:
            return _wrap_openslide(handle, p, mpp)
        if suffix not in PLAIN_EXT:
            raise InputError("OpenSlide does not recognise this file as a slide (unsupported format, or the file is "
                              "truncated or corrupt)", path=p, code="unsupported")
    if suffix in PLAIN_EXT:
        return _open_plain(p, mpp)
    raise InputError(f"unknown slide format '{suffix}' (known: {', '.join(SLIDE_EXTENSIONS)})", path=p,
                     code="bad_format")


def _wrap_openslide(handle: Any, p: Path, mpp: float | None) -> Slide:
    props = handle.properties
    if mpp is None:
        try:
            mx, my = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
        except (KeyError, ValueError):
            handle.close()
            raise InputError("slide has no resolution (mpp) metadata; give --mpp (um per pixel)", path=p,
                             code="no_mpp") from None
        try:
            mx = check_mpp(mx, what="slide metadata openslide.mpp-x", path=p)
            my = check_mpp(my, what="slide metadata openslide.mpp-y", path=p)
        except InputError as exc:
            handle.close()
            raise InputError(f"{exc.problem}; give --slide-mpp if the slide's resolution is known", path=p,
                             code="bad_mpp") from None
        mpp = (mx + my) / 2.0
    try:
        check_pyramid([tuple(map(int, d)) for d in handle.level_dimensions],
                      [float(d) for d in handle.level_downsamples], path=p)
    except InputError:
        handle.close()
        raise
    slide = OpenSlideSlide(handle, path=str(p), mpp=float(mpp))
    try:  # touch one pixel so truncated pyramids fail here, not in a worker later
        slide.read_level((0, 0), slide.level_count - 1, (1, 1))
        check_level_content(slide, path=p)
    except InputError:
        slide.close()
        raise
    return slide


def _open_plain(p: Path, mpp: float | None) -> Slide:
    from PIL import UnidentifiedImageError

    from medseg.limits import open_image

    try:
        with open_image(p, what="slide image", bytes_per_pixel=3) as im:
            im.load()
            if mpp is None:
                mpp = _mpp_from_dpi(im)
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(f"cannot read image (corrupt or truncated?): {exc}", path=p, code="unreadable") from None
    if mpp is None:
        raise InputError("image has no resolution metadata; give --mpp (um per pixel)", path=p, code="no_mpp")
    return ArraySlide(arr, mpp=mpp, path=str(p), vendor="image")


def _mpp_from_dpi(im: Any) -> float | None:
    """um/px from a TIFF resolution tag in centimetres (unit 3); inch DPI (often a 72/96 default) is ignored."""
    tags = getattr(im, "tag_v2", None)
    if not tags:
        return None
    unit, xres = tags.get(296), tags.get(282)
    if unit == 3 and xres:
        try:
            return 1e4 / float(xres)
        except (ZeroDivisionError, TypeError, ValueError):
            return math.nan  # checked (and refused as bad_mpp) by ArraySlide
    return None
