"""Training of segmentation models: data sets in the MSD / nnU-Net layout, patch sampling,
augmentation, Dice + CE loss, checkpoints in a model bundle, DDP under torchrun.

>>> from medseg.training import train                       # doctest: +SKIP
>>> train(cfg)                                              # doctest: +SKIP
"""

from __future__ import annotations


def train(cfg, *, resume: bool = False):
    """See :func:`medseg.training.trainer.train` (imported lazily: it pulls in torch)."""
    from medseg.training.trainer import train as _train

    return _train(cfg, resume=resume)


__all__ = ["train"]
