"""Multiple-instance learning on bags of feature vectors: bags (:mod:`.bags`), training of the
aggregators (:mod:`.fit`), many training sets trained side by side (:mod:`.folds`), epoch choice by
inner CV (:mod:`.select`), model selection over a grid (:mod:`.grid`), instance AUC of the attention
(:mod:`.instances`) and cross-validation (:mod:`.crossval`). Slide-level code (tiling, features,
BCL) lives in :mod:`medseg.wsi` and imports this package, never the other way round."""
