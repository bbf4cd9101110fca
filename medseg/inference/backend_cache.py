"""The on-disk cache of converted networks (:mod:`medseg.inference.backends`): where it lives, what
names an entry, and how an entry is verified on load and written atomically.

An entry is ``ROOT/openvino/NAME/{model.xml, model.bin, key.json}``; ``key.json`` holds the key the
network was converted for and both files' SHA-256. A stale key or a damaged file is rebuilt, never
trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("medseg.inference")

CACHE_FOLDER = ".medseg-cache"


def cache_dirs(bundle_dir: str | Path | None = None) -> tuple[Path, ...]:
    """Candidate cache roots in order: ``$MEDSEG_CACHE_DIR``; else the bundle folder's ``.medseg-cache``
    (when the bundle folder is writable), then ``$XDG_CACHE_HOME/medseg`` or ``~/.cache/medseg``."""
    env = os.environ.get("MEDSEG_CACHE_DIR")
    if env:
        return (Path(env).expanduser(),)
    out = []
    if bundle_dir is not None and os.access(bundle_dir, os.W_OK):
        out.append(Path(bundle_dir) / CACHE_FOLDER)
    xdg = os.environ.get("XDG_CACHE_HOME")
    out.append((Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "medseg")
    return tuple(out)


def weights_digest(model) -> str:
    """SHA-256 of a torch module's state (names, dtypes, shapes and bytes): what the export depends on."""
    import torch

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class CacheEntry:
    """One converted network on disk: ``root/openvino/NAME/{model.xml, model.bin, key.json}``."""

    folder: Path
    key: dict[str, Any]

    def load(self, *, partial: bool = False) -> tuple[bytes, bytes] | None:
        """The IR's bytes when the sidecar matches the key and both files their SHA-256, else None
        (with the reason logged: a damaged entry warns, a stale one is only noted). ``partial``: the key
        holds only the fields known without torch (:func:`medseg.inference.openvino_runtime.key_fields`,
        naming the source files) and the sidecar must agree on those."""
        side = self.folder / "key.json"
        if not side.is_file():
            return None
        try:
            rec = json.loads(side.read_text())
            xml, bin_ = (self.folder / "model.xml").read_bytes(), (self.folder / "model.bin").read_bytes()
        except (OSError, ValueError) as exc:
            log.warning("OpenVINO cache %s is damaged (%s); rebuilding it", self.folder, type(exc).__name__)
            return None
        have = rec.get("key") if isinstance(rec, dict) else None
        if partial and isinstance(have, dict) and have.get("source"):
            have = {k: have.get(k) for k in self.key}
        if have != self.key:
            log.info("OpenVINO cache %s was written for another version or setting; rebuilding it", self.folder)
            return None
        files = rec.get("files") or {}
        if files.get("model.xml") != _sha256_bytes(xml) or files.get("model.bin") != _sha256_bytes(bin_):
            log.warning("OpenVINO cache %s is damaged (a file does not match its SHA-256); rebuilding it",
                        self.folder)
            return None
        return xml, bin_

    def store(self, save: Callable[[Path], None], extra: dict[str, Any] | None = None) -> bool:
        """Write the entry atomically: ``save(xml_path)`` writes the IR into a temporary folder beside
        the entry, the sidecar records the key and hashes, then the folder is renamed into place.
        Returns False (after a debug note) when the folder is not writable."""
        parent = self.folder.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", dir=parent))
        except OSError as exc:
            log.debug("cache folder %s not writable: %s", parent, exc)
            return False
        try:
            save(tmp / "model.xml")
            files = {f: _sha256_bytes((tmp / f).read_bytes()) for f in ("model.xml", "model.bin")}
            (tmp / "key.json").write_text(json.dumps({"key": self.key, "files": files, **(extra or {})},
                                                     indent=1, sort_keys=True))
            os.chmod(tmp, 0o755)                  # mkdtemp's 0700 would hide a shared bundle's cache
            if self.folder.exists():              # stale or damaged: moved aside, then removed
                old = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.old.", dir=parent))
                os.replace(self.folder, old / "entry")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, self.folder)
            return True
        except OSError as exc:        # another process renamed its copy first, a full disk ...
            log.debug("could not store %s: %s", self.folder, exc)
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def remove_superseded(entry: CacheEntry) -> int:
    """Delete the sibling entries that hold ``entry``'s network under an older export format (the same
    loaded-state digest, fold, shape and recipe options; e.g. named by that digest before keys named the
    source files): nothing would read them again. Returns how many went."""
    same = ("weights_sha256", "fold", "input", "exact_norm")
    gone = 0
    try:
        siblings = [p for p in entry.folder.parent.iterdir() if p != entry.folder and not p.name.startswith(".")]
    except OSError:
        return 0
    for other in siblings:
        try:
            rec = json.loads((other / "key.json").read_text())
        except (OSError, ValueError):
            continue
        key = rec.get("key") if isinstance(rec, dict) else None
        if isinstance(key, dict) and key.get("format") != entry.key.get("format") \
                and all(key.get(f) == entry.key.get(f) for f in same):
            shutil.rmtree(other, ignore_errors=True)
            gone += 1
    return gone


def entry_for(key: dict[str, Any], root: Path) -> CacheEntry:
    """The cache entry of ``key`` under ``root``: named by weights (the source files when known, else the
    loaded state), fold, shape and recipe options only, so that a version change finds (and replaces) the
    stale entry instead of leaving it behind."""
    what = "source" if key.get("source") else "weights_sha256"
    ident = {k: key[k] for k in (what, "fold", "input", "exact_norm")}
    name = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    return CacheEntry(root / "openvino" / name, key)
