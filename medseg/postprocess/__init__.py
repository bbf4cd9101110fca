"""Post-processing of label maps (numpy/scipy, no torch): components, holes, morphology in mm, rules.

>>> from medseg.postprocess import apply_postprocess   # doctest: +SKIP
>>> cleaned = apply_postprocess(label_map, spacing_mm, {1: [{"op": "keep_largest"}]})  # doctest: +SKIP
"""

from medseg.postprocess.components import fill_holes, keep_largest_component, remove_small_components
from medseg.postprocess.morphology import binary_closing, binary_opening, ellipsoid
from medseg.postprocess.rules import apply_postprocess, choose_postprocess, dice, mean_dice

__all__ = [
    "keep_largest_component", "remove_small_components", "fill_holes",
    "binary_opening", "binary_closing", "ellipsoid",
    "apply_postprocess", "choose_postprocess", "dice", "mean_dice",
]
