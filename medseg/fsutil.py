"""File-system helpers: atomic writes, safe output paths, output-folder locks, case names from file names."""

from __future__ import annotations

import errno
import glob
import os
import re
import stat
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
    starting with '-' (which command-line tools would read as an option). Idempotent."""
    s = _SAFE.sub("_", name).strip("._").lstrip("-").strip("._")[:max_len].rstrip("._") or "case"
    return s


def _suffix(raw: str) -> str:
    import hashlib

    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()[:6]


def unique_names(raw: list[str], *, max_len: int = 120) -> list[str]:
    """:func:`sanitize_name` of each raw name, collision-free: names that sanitise to the same token
    (``Müller`` / ``Mäller``, ``a b`` / ``a_b``; compared ignoring case, for case-insensitive file
    systems) get a stable suffix from their raw name (``M_ller-1a2b3c``), except a name that was
    already safe, which keeps itself. The suffix depends on the raw name alone, so every verb (and
    every run) gives one raw name the same case name. Raw names that are equal stay equal (the
    caller reports those as duplicates)."""
    from collections import Counter

    safe = [sanitize_name(r, max_len=max_len) for r in raw]
    counts = Counter(s.lower() for _, s in set(zip(raw, safe)))  # distinct raw names per token
    out = []
    for r, s in zip(raw, safe):
        if counts[s.lower()] > 1 and r != s:
            s = f"{s[:max_len - 7].rstrip('._')}-{_suffix(r)}"
        out.append(s)
    return out


def case_name(path: str | os.PathLike) -> str:
    """The case name of one input file: :func:`sanitize_name` of :func:`case_id`."""
    return sanitize_name(case_id(path))


def case_names(paths: list) -> list[str]:
    """The case names of the files of one folder, as every verb (predict, evaluate, stages) names
    them: :func:`unique_names` of their :func:`case_id`."""
    return unique_names([case_id(p) for p in paths])


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


#: the lock file of an output folder, shared by every verb that writes one (predict, evaluate, run...)
LOCK = ".medseg-batch.lock"
_LOCK_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def prepare_output_folder(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed, after :func:`check_output_dir` found it usable: a one-line
    ConfigError (code ``not_writable`` or ``output_is_file``) instead of a traceback later (also where
    permissions look right but the file system refuses, e.g. an immutable folder)."""
    from medseg.errors import ConfigError

    p = check_output_dir(out, "output folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output folder {p}: cannot create it ({exc.strerror or exc})", code="not_writable") from None
    return p


@contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of the output folder ``out`` (created if needed) while the block runs.

    The lock file ``out/.medseg-batch.lock`` is created with ``O_EXCL | O_NOFOLLOW`` (a symlink
    planted there is refused, never followed out of the folder) and held with ``flock``; a second
    run into the same folder fails at once with code ``busy``. A lock file left by a killed run
    is taken over (nobody holds its ``flock``). The lock file is removed when the block ends.
    """
    p = prepare_output_folder(out)
    lock = p / LOCK
    fd = _acquire(lock, p)
    try:
        yield lock
    finally:
        try:
            if _same_file(lock, fd):
                lock.unlink()
        except OSError:
            pass
        os.close(fd)  # releases the flock


def _acquire(lock: Path, folder: Path) -> int:
    try:
        import fcntl
    except ImportError:  # Windows: O_EXCL alone; a lock left by a killed run must be removed by hand
        fcntl = None  # type: ignore[assignment]
    for _ in range(20):
        try:
            fd = os.open(lock, _LOCK_FLAGS, 0o644)
        except FileExistsError:
            try:
                fd = os.open(lock, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                continue  # removed meanwhile by the run that held it: try again
            except OSError as exc:
                if exc.errno == errno.ELOOP or lock.is_symlink():
                    raise MedsegError(f"the lock file {LOCK} is a symbolic link (planted?); remove it", path=folder,
                                      code="unsafe_path") from None
                raise MedsegError(f"cannot open the lock file ({exc.strerror or exc})", path=folder,
                                  code="not_writable") from None
            if fcntl is None:
                os.close(fd)
                raise MedsegError(f"another medseg run is writing to this folder ({LOCK} exists)", path=folder,
                                  code="busy") from None
        except PermissionError as exc:
            raise MedsegError(f"cannot create a file in the output folder ({exc.strerror}); give another folder",
                              path=folder, code="not_writable") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise MedsegError(f"the lock file {LOCK} is a symbolic link (planted?); remove it", path=folder,
                                  code="unsafe_path") from None
            raise MedsegError(f"cannot create the lock file ({exc.strerror or exc})", path=folder,
                              code="not_writable") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise MedsegError(f"the lock file {LOCK} is not a regular file; remove it", path=folder, code="unsafe_path")
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise MedsegError("another medseg run is writing to this folder; wait for it or use another output "
                                  "folder", path=folder, code="busy") from None
        if _same_file(lock, fd):
            return fd
        os.close(fd)  # the file was removed or replaced between open and flock: take the new one
    raise MedsegError("cannot take the output folder's lock (it keeps changing)", path=folder, code="busy")


def _same_file(path: Path, fd: int) -> bool:
    try:
        a, b = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


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
