"""Inference: sliding windows, mirroring test-time augmentation, ensembles (torch).

>>> from medseg.inference import sliding_window   # doctest: +SKIP
>>> logits = sliding_window(model, image, (64, 64, 64), overlap=0.5, batch_size=4)  # doctest: +SKIP
"""

from medseg.inference.ensemble import ensemble
from medseg.inference.sliding_window import sliding_window
from medseg.inference.tta import mirror_tta

__all__ = ["sliding_window", "mirror_tta", "ensemble"]
