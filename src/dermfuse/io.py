"""Atomic file writes: the one way dermfuse writes files into run folders and caches.

Fold and member jobs on several machines may share one run folder. Every file is written
under a temporary name unique to this host, process and call (`.NAME.HOST.PID.RANDOM.tmp`
in the same folder), flushed and fsynced, then renamed over the target with `os.replace`,
which is atomic on POSIX file systems: a reader sees the old file or the new one, never a
half-written one, and two writers of the same file leave one complete version. The file gets
the mode a plain ``open(path, "w")`` would give it (0666 less the umask), whatever mode the
writer created the temporary file with (safetensors creates 0600).
"""

from __future__ import annotations

import os
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_path", "temp_path"]


def temp_path(path: str | os.PathLike, suffix: str = "") -> Path:
    """A temporary name beside `path`, unique per host, process and call. `suffix` is
    appended after '.tmp' for writers that insist on an extension (np.save adds '.npy')."""
    path = Path(path)
    host = socket.gethostname().replace(os.sep, "_") or "host"
    return path.with_name(f".{path.name}.{host}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp{suffix}")


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to `path`, on
    error it is removed and `path` is left as it was.

        with atomic_path(run / "checkpoint.pt") as tmp:
            torch.save(state, tmp)
    """
    path = Path(path)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        _fsync_file(tmp)
        try:
            os.chmod(tmp, _FILE_MODE)
        except OSError:
            pass  # a share without modes (CIFS, some FUSE): the write still counts
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], suffix: str = "") -> Path:
    """Call `write(tmp)` to write the file, then move it into place atomically (see
    `atomic_path`). Returns `path`."""
    with atomic_path(path, suffix) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))
