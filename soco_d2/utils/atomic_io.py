"""Files that are never half-written: write a temporary file next to the target, fsync it,
rename it over the target (``os.replace`` is atomic on POSIX), fsync the folder.

Used for every file the project writes that a later step reads back: proposal files and
their progress chunks, checkpoints and ``last_checkpoint``, exported trunks, dataset jsons.
"""
import json
import os
import uuid
from typing import IO, Callable

__all__ = ["TMP_MARK", "atomic_write", "atomic_write_bytes", "atomic_write_json"]

# Part of every temporary file name: ".<name>.tmp-<pid>-<random>"
TMP_MARK = ".tmp-"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. a platform that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` all at once: ``write(f)`` fills a temporary binary file next to it,
    which is fsynced and renamed to ``path``. On any error the temporary file is removed and
    ``path`` is left as it was. The folder is created if needed.
    """
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str, obj, **dump_kwargs) -> None:
    atomic_write_bytes(path, json.dumps(obj, **dump_kwargs).encode("utf-8"))
