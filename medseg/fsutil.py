"""File-system helpers: atomic writes, safe output paths, case ids from file names."""

from __future__ import annotations

import errno
import glob
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medseg.errors import MedsegError


class WriteError(MedsegError, OSError):
    """An output could not be written (disk full, permissions...). Still an ``OSError``."""

    code = "write_failed"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()

_NII_EXT = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy", ".npz", ".dcm")


def case_id(path: str | os.PathLike) -> str:
    """File name without its image extension (``'a/b/case_01.nii.gz'`` -> ``'case_01'``)."""
    name = Path(path).name
    for ext in _NII_EXT:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def sanitize_name(name: str, *, max_len: int = 120) -> str:
    """A file-name-safe token: letters, digits, '.', '_' and '-' only; never '.', '..', empty or
    starting with '-' (which command-line tools would read as an option)."""
    s = _SAFE.sub("_", name).strip("._").lstrip("-").strip("._") or "case"
    return s[:max_len]


def safe_join(root: str | os.PathLike, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result that escapes ``root``."""
    if any("\x00" in str(p) for p in (root, *parts)):
        raise MedsegError(f"output path part {parts!r} holds a NUL byte", code="unsafe_path")
    root_r = Path(root).resolve()
    target = root_r.joinpath(*parts).resolve()
    if target != root_r and root_r not in target.parents:
        raise MedsegError(f"output path {target} would leave the output folder {root_r}", code="unsafe_path")
    return target


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync and rename it into place.

    On any exception the temporary file is removed and ``path`` is untouched; an ``OSError``
    (disk full, read-only folder...) is raised as :class:`WriteError` naming ``path``.
    The temporary name keeps the final suffix so writers that look at extensions work.
    A process killed meanwhile leaves the temporary file behind: :func:`remove_stale_tmp`.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".nii.gz") else final.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    tmp_p = Path(tmp)
    os.chmod(tmp_p, _FILE_MODE)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_p
        with open(tmp_p, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_p, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        tmp_p.unlink(missing_ok=True)
        if isinstance(exc, MedsegError):
            raise
        hint = "free some disk space and run again" if exc.errno == errno.ENOSPC else "check the output folder"
        raise WriteError(f"cannot write this output ({exc.strerror or exc}); {hint} - files written before are "
                         "unchanged", path=final, code="disk_full" if exc.errno == errno.ENOSPC else None) from exc
    except BaseException:
        tmp_p.unlink(missing_ok=True)
        raise


def tmp_names(path: str | os.PathLike) -> str:
    """Glob pattern of the temporary files :func:`atomic_path` makes for ``path``."""
    final = Path(path)
    return f".{glob.escape(final.name)}.*.tmp*"


def remove_stale_tmp(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files left beside ``path`` by an interrupted :func:`atomic_path` write
    (a killed process cannot clean up). Returns the removed paths."""
    final = Path(path)
    if not final.parent.is_dir():
        return []
    gone = []
    for p in final.parent.glob(tmp_names(final)):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_output_dir(path: str | os.PathLike, what: str = "--output") -> Path:
    """``path`` as a usable output folder: an existing folder, or one that can be made (its nearest
    existing parent is a folder we may write). Raises ConfigError (code ``output_is_file`` /
    ``not_writable``) naming ``what`` and the path otherwise, before any work; creates nothing."""
    from medseg.errors import ConfigError

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is an existing file; give a folder", code="output_is_file")
    base = p.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"{what} {p}: {base} is a file, so the folder cannot be made", code="output_is_file")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {p}: folder {base} is not writable", code="not_writable")
    return p
