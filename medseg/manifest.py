"""The batch manifest (``OUT/manifest.json``): what a cohort run has done, with the SHA-256 of every
output and a hash of the run's parameters, rewritten atomically after every case; and the checks
that let a re-run skip exactly the cases whose outputs are intact. Used by :mod:`medseg.batch`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, MedsegError
from medseg.executors import error_of
from medseg.fsutil import atomic_write_text

log = logging.getLogger("medseg.batch")

MANIFEST = "manifest.json"
FORMAT = "medseg-batch-manifest/1"


@dataclass(frozen=True)
class CaseOutcome:
    """What happened to one case in this run: ``status`` is ``done``, ``skipped`` or ``failed``."""

    case_id: str
    status: str
    outputs: dict[str, str] = field(default_factory=dict)
    error: dict[str, str] | None = None


def params_hash(params: Any) -> str:
    """SHA-256 of the canonical JSON of ``params`` (sorted keys)."""
    try:
        text = json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"batch params must be plain JSON values (str, numbers, lists, dicts): {exc}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The manifest of ``out_dir``, or an empty one when missing or unreadable (then all cases rerun)."""
    path = Path(out_dir) / MANIFEST
    empty = {"format": FORMAT, "cases": {}}
    if not path.exists():
        return empty
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable manifest (%s); every case will be run again", path, exc)
        return empty
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
        log.warning("%s: not a medseg batch manifest; every case will be run again", path)
        return empty
    return data


_HEX64 = frozenset("0123456789abcdef")


def is_complete(entry: Any, out_dir: Path, phash: str, *, case_id: str | None = None,
                case_ids: Any = ()) -> bool:
    """True if ``entry`` is done with params hash ``phash`` and all its outputs match their checksums.

    The manifest is a file anyone can edit, so an entry is trusted only when it is well formed
    (a mapping; outputs a mapping of relative paths to SHA-256 hex digests), every output is a
    regular file inside ``out_dir`` (no ``..``, no absolute path, no symlink out) and, given
    ``case_id``, the output's file name is the case's own (``CASE.ext`` or ``CASE_suffix.ext``, not
    the name of another case in ``case_ids``). Anything else means "redo the case", never a crash.
    """
    if not isinstance(entry, dict) or entry.get("status") != "done" or entry.get("params_hash") != phash:
        return False
    outputs = entry.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return False
    root = Path(out_dir).resolve()
    others = set(case_ids) - {case_id}
    for rel, digest in outputs.items():
        if not isinstance(rel, str) or not isinstance(digest, str) or len(digest) != 64 or set(digest) - _HEX64:
            return False
        rp = Path(rel)
        if rp.is_absolute() or ".." in rp.parts or not rel or "\x00" in rel:
            return False
        if case_id is not None and not _own_name(rp.name, case_id, others):
            return False
        p = Path(out_dir) / rp
        try:
            if p.is_symlink() or root not in p.resolve().parents or not p.is_file() or sha256_file(p) != digest:
                return False
        except (OSError, ValueError):
            return False
    return True


def _own_name(name: str, case_id: str, others: set[str]) -> bool:
    """``name`` is ``CASE.ext`` or ``CASE_xxx.ext`` of ``case_id`` and not a file of another case."""
    if not name.startswith((case_id + ".", case_id + "_")):
        return False
    stem = name.split(".", 1)[0]
    return stem == case_id or not any(stem == o or stem.startswith(o + ".") for o in others)


def save_manifest(out: Path, manifest: dict) -> None:
    manifest["cases"] = dict(sorted(manifest["cases"].items()))
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


class Recorder:
    """Records finished cases in the manifest (rewritten atomically after each) and in ``outcomes``."""

    def __init__(self, out, manifest, phash, outcomes, on_finished=None):
        self.out, self.manifest, self.phash, self.outcomes = out, manifest, phash, outcomes
        self.on_finished = on_finished

    def record(self, cid: str, paths, error: dict[str, str] | None) -> None:
        """``paths`` written for ``cid`` (checked and hashed here), or the case's ``error``."""
        entry: dict[str, Any] = {"params_hash": self.phash}
        if error is None:
            try:
                entry["outputs"] = self._hash_outputs(cid, paths)
                entry["status"] = "done"
            except Exception as e:
                error = error_of(e)
        if error is not None:
            entry = {"params_hash": self.phash, "status": "failed", "error": dict(error)}
            log.warning("batch: case %s failed: %s", cid, error["message"])
        self.manifest["cases"][cid] = entry
        save_manifest(self.out, self.manifest)
        self.outcomes[cid] = CaseOutcome(cid, entry["status"], entry.get("outputs", {}), entry.get("error"))
        if self.on_finished is not None:
            try:
                self.on_finished(self.outcomes[cid])
            except Exception:  # a bookkeeping hook must not fail the case or the run
                log.warning("batch: on_finished hook failed for case %s", cid, exc_info=True)

    def _hash_outputs(self, cid: str, paths) -> dict[str, str]:
        root = self.out.resolve()
        outputs = {}
        for p in paths or ():
            full = (self.out / p).resolve() if not Path(p).is_absolute() else Path(p).resolve()
            if root not in full.parents:
                raise MedsegError(f"case {cid}: output {p} is outside the output folder {root}", code="unsafe_path")
            if not full.is_file():
                raise MedsegError(f"case {cid}: write() reported {p} but no such file exists", code="missing_output")
            outputs[full.relative_to(root).as_posix()] = sha256_file(full)
        if not outputs:
            raise MedsegError(f"case {cid}: write() reported no output files", code="missing_output")
        return dict(sorted(outputs.items()))
