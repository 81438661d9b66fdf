"""Content-addressed archives: the data sets and inputs the dashboard sends its workers, zipped once and kept
under their hash in ``<data home>/cache/archives/``, so a worker downloads only what it has not cached yet."""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from storage import archives, paths

_hash_cache: dict[tuple, str] = {}
_archive_lock = threading.Lock()


def folder_hash(folder: Path) -> str:
    """SHA-256 over the relative paths and bytes of every visible file under ``folder`` (remembered while
    no file's size or time changes)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    key = (str(folder), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _hash_cache:
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def file_hash(path: Path) -> str:
    """SHA-256 of one file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_archive(folder: Path) -> tuple[str, Path]:
    """(content hash, zip) of a folder; the zip is kept in ``<data home>/cache/archives/<hash>.zip``."""
    digest = folder_hash(folder)
    target = paths.data_home() / "cache" / "archives" / f"{digest}.zip"
    with _archive_lock:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            archives.zip_folder(folder, target)
    return digest, target
