"""The pipeline stages: one module per layer, each registering its stages on import.

=====================  ==========================================================================
module                 registered stages
=====================  ==========================================================================
:mod:`.preprocess`     ``crop_foreground``, ``denoise_gaussian``, ``denoise_median``,
                       ``denoise_curvature``, ``resample``, ``zscore``, ``minmax``, ``ct_window``
:mod:`.metrics`        ``evaluate``
:mod:`.inference`      ``predict``, ``postprocess``
:mod:`.wsi`            ``wsi_tile``, ``wsi_features``, ``wsi_mil``, ``wsi_bcl``
=====================  ==========================================================================

This package sits above the layers it runs (preprocess, metrics, inference, wsi) and below the
runner (:mod:`medseg.pipeline`): those layers never import it. What the stages share (registry,
:class:`Context`, :func:`volume_stage`) is in :mod:`medseg.stages.base`.
"""

from __future__ import annotations

from medseg.stages import inference, metrics, preprocess
from medseg.stages.base import STAGES, Context, map_volumes, register_stage, volume_stage

try:
    from medseg.stages import wsi
except ModuleNotFoundError as exc:  # an install without the whole-slide layer: its stages are simply absent
    if exc.name not in ("medseg.stages.wsi", "medseg.wsi"):  # a missing dependency of it is an error
        raise
    wsi = None  # type: ignore[assignment]

__all__ = ["STAGES", "Context", "map_volumes", "register_stage", "volume_stage",
           "inference", "metrics", "preprocess", "wsi"]
