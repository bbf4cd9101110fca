"""Bags of feature vectors: the classic MIL benchmarks (CSV, Andrews-style .mat) and slide features.

A :class:`Bags` holds one ``(n_i, D)`` float32 array per bag, the bag labels ``(B,)`` in {0, 1}
and the bag ids; instance labels when the source has them (.mat files).

CSV layout (no header): column 0 the bag label (0/1, the same on every row of a bag), column 1
the bag id, the remaining columns the features. ``.mat`` layout (Andrews et al. 2002): keys
``features`` (instances x D, dense or sparse), ``labels`` (instance labels -1/+1 or 0/1; a bag is
positive when any instance is) and ``bag_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InputError

__all__ = ["Bags", "load_bags", "bags_from_arrays"]


@dataclass
class Bags:
    features: list[np.ndarray]
    labels: np.ndarray
    ids: list[str]
    instance_labels: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.features)

    @property
    def n_features(self) -> int:
        return int(self.features[0].shape[1]) if self.features else 0

    def subset(self, idx) -> Bags:
        idx = [int(i) for i in np.asarray(idx).ravel()]
        inst = [self.instance_labels[i] for i in idx] if self.instance_labels is not None else None
        return Bags([self.features[i] for i in idx], self.labels[idx], [self.ids[i] for i in idx], inst)


def bags_from_arrays(x: np.ndarray, bag_ids: np.ndarray, labels: np.ndarray, *, instance_level: bool,
                     source: str = "<array>") -> Bags:
    """Group rows of ``x`` ``(N, D)`` by ``bag_ids`` (first-seen order).

    ``labels`` ``(N,)`` are instance labels (``instance_level=True``; bag = any positive) or the
    bag label repeated on each row (then rows of one bag must agree).
    """
    x = np.asarray(x, dtype=np.float32)
    bag_ids = np.asarray(bag_ids).ravel()
    labels = np.asarray(labels, dtype=float).ravel()
    if not (x.shape[0] == bag_ids.size == labels.size):
        raise InputError(f"{x.shape[0]} feature rows but {bag_ids.size} bag ids and {labels.size} labels",
                         path=source, code="bad_bags")
    if not np.isfinite(x).all():
        raise InputError("features hold NaN or infinite values", path=source, code="bad_bags")
    lab01 = (labels > 0).astype(np.int64)
    if not np.isin(labels, [-1, 0, 1]).all():
        raise InputError(f"labels must be 0/1 or -1/+1, found {np.unique(labels)[:6]}", path=source,
                         code="bad_labels")
    _, first, inverse = np.unique(bag_ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    feats, ys, ids, inst = [], [], [], []
    for k in order:
        rows = np.flatnonzero(inverse == k)
        li = lab01[rows]
        if not instance_level and li.min() != li.max():
            raise InputError(f"bag {bag_ids[rows[0]]} has rows with different labels", path=source,
                             code="bad_labels")
        feats.append(x[rows])
        ys.append(int(li.max()))
        ids.append(str(bag_ids[rows[0]]))
        inst.append(li)
    return Bags(feats, np.asarray(ys, dtype=np.int64), ids, inst if instance_level else None)


def load_bags(path: str | Path) -> Bags:
    """Read a MIL benchmark file (``.csv`` or ``.mat``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", path=p, code="missing")
    suffix = p.suffix.lower()
    if suffix == ".mat":
        return _load_mat(p)
    if suffix in (".csv", ".txt"):
        return _load_csv(p)
    raise InputError("unknown bag file type (use .csv or Andrews-style .mat)", path=p, code="bad_format")


def _load_csv(p: Path) -> Bags:
    try:
        a = np.loadtxt(p, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise InputError(f"not a numeric CSV (column 0 label, column 1 bag id, then features): {exc}",
                         path=p, code="bad_csv") from None
    if a.shape[0] == 0 or a.shape[1] < 3:
        raise InputError("needs at least 3 columns (label, bag id, features) and one row", path=p,
                         code="bad_csv")
    return bags_from_arrays(a[:, 2:], a[:, 1].astype(np.int64), a[:, 0], instance_level=False, source=str(p))


def _load_mat(p: Path) -> Bags:
    import scipy.io
    import scipy.sparse

    try:
        d = scipy.io.loadmat(p)
    except (ValueError, OSError, TypeError) as exc:
        raise InputError(f"cannot read .mat file: {exc}", path=p, code="unreadable") from None
    missing = [k for k in ("features", "labels", "bag_ids") if k not in d]
    if missing:
        raise InputError(f".mat file lacks key(s) {', '.join(missing)} (needs features, labels, bag_ids)",
                         path=p, code="bad_mat")

    def dense(v):
        return v.toarray() if scipy.sparse.issparse(v) else np.asarray(v)

    x = dense(d["features"]).astype(np.float64)
    return bags_from_arrays(x, dense(d["bag_ids"]).ravel(), dense(d["labels"]).ravel(), instance_level=True,
                            source=str(p))
