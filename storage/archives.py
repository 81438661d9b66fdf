"""Zip archives in and out of the data home, safely.

Uploaded zips come from users: a member may try to escape its folder (``../x``, ``/etc/x``,
``C:\\x``), be a symbolic link, or be a "zip bomb" (a few kilobytes that inflate to gigabytes).
:func:`safe_extract_zip` refuses all of these with a sentence *before* writing anything, counts
the bytes it really inflates (headers can lie), and extracts into a temporary folder next to the
destination that is renamed into place only when everything succeeded, so a failed upload
leaves nothing half-written behind.

Limits: an archive inflates to at most ``ML_MANAGER_MAX_EXTRACT_MB`` megabytes (default
``DEFAULT_MAX_EXTRACT_MB``), at most ``MAX_RATIO`` times its compressed size (and the compressed sizes
its headers declare must fit in the file's real size), and never leaves
less than ``MIN_FREE_BYTES`` free on the disk it is unpacked to (checked before and while it is written).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Union

from storage import paths
from storage.errors import UserError

MAX_EXTRACT_ENV = "ML_MANAGER_MAX_EXTRACT_MB"
DEFAULT_MAX_EXTRACT_MB = 2048  # inflated size of one archive: room for a large fundus data set
MAX_MEMBERS = 50_000
MAX_RATIO = 250  # inflated / compressed, per member and overall (zip bombs reach 1000+)
MIN_FREE_BYTES = 256 * 1024**2  # an extraction never leaves less free disk space than this
_CHUNK = 1 << 20
_DISK_CHECK_EVERY = 64 * _CHUNK  # re-read the free disk space after this many bytes written
_JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db")
_NAME = re.compile(r"[^A-Za-z0-9_-]+")

ZipSource = Union[str, os.PathLike, bytes, BinaryIO]


class ArchiveError(UserError):
    """A zip archive could not be used; the message is meant for the user."""


def dataset_name(text: str) -> str:
    """A folder name made of letters, digits, '-' and '_' from any label (e.g. an upload's file name)."""
    stem = Path(str(text)).name
    if stem.lower().endswith(".zip"):
        stem = stem[:-4]
    name = _NAME.sub("_", stem).strip("_-")[:64]
    if not name:
        raise ArchiveError(f"{text!r} does not give a usable data set name: use letters, digits, '-' or '_'.")
    return name


def max_extract_bytes() -> int:
    """The most bytes one archive may inflate to: ``ML_MANAGER_MAX_EXTRACT_MB`` megabytes (read on every call).

    Raises:
        ArchiveError: the setting is not a positive number.
    """
    text = os.environ.get(MAX_EXTRACT_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_EXTRACT_MB * 1024**2
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = float("nan")
    if not 0 < megabytes < float("inf"):
        raise ArchiveError(f"{MAX_EXTRACT_ENV} must be a positive number of megabytes (for example "
                           f"{DEFAULT_MAX_EXTRACT_MB}), not {text!r}: correct or unset it.")
    return int(megabytes * 1024**2)


def _size_text(n: float) -> str:
    if n >= 1024**3:
        return f"{n / 1024**3:.1f} GB"
    return f"{n / 1024**2:.0f} MB" if n >= 1024**2 else f"{n / 1024:.0f} kB"


def _source_size(source: ZipSource) -> int | None:
    """The archive's real size in bytes (None when it cannot be told without reading it all)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return len(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            return os.stat(source).st_size
        except OSError:
            return None
    try:
        here = source.tell()
        end = source.seek(0, io.SEEK_END)
        source.seek(here)
        return end
    except (AttributeError, OSError, ValueError):
        return None


def _check_free_space(folder: Path, need: int, min_free: int) -> None:
    """Refuse when writing ``need`` more bytes under ``folder`` would leave less than ``min_free`` free."""
    free = shutil.disk_usage(folder).free
    if free - need < min_free:
        raise ArchiveError(
            f"Not enough free disk space to unpack the archive: {_size_text(free)} free, it needs "
            f"{_size_text(need)} more and {_size_text(min_free)} must stay free. Free some space and try again."
        )


def _open_zip(source: ZipSource) -> zipfile.ZipFile:
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return zipfile.ZipFile(io.BytesIO(bytes(source)))
        return zipfile.ZipFile(source)
    except zipfile.BadZipFile:
        raise ArchiveError("The upload is not a zip archive (or it is damaged): create it again with a zip tool.") from None
    except FileNotFoundError:
        raise ArchiveError(f"No such zip file: {source}.") from None


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's relative path, None for entries to skip; raises for unsafe names."""
    name = info.filename.replace("\\", "/")
    if any(part in name for part in _JUNK):
        return None
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ArchiveError(f"The archive holds an absolute path ({info.filename!r}); only relative paths are accepted.")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"The archive holds a path that leaves its folder ({info.filename!r}); it was refused.")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"The archive holds a symbolic link ({info.filename!r}); store real files instead.")
    if not parts:
        return None
    return PurePosixPath(*parts)


def check_zip(
    source: ZipSource,
    *,
    max_total_bytes: int | None = None,
    max_members: int = MAX_MEMBERS,
    max_ratio: float = MAX_RATIO,
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The members to extract, after checking names, count, declared sizes and ratios.

    Args:
        source: the archive (a path, its bytes, or a binary file object).
        max_total_bytes: the most it may inflate to; default :func:`max_extract_bytes`.
        max_members: the most entries it may hold.
        max_ratio: the most a member, or the whole archive, may inflate relative to its compressed
            size (the compressed sizes the headers declare must fit in the archive's real size).

    Returns:
        ``(info, relative path)`` of every member to extract (junk such as ``__MACOSX/`` left out).

    Raises:
        ArchiveError: with a sentence for every refusal.
    """
    if max_total_bytes is None:
        max_total_bytes = max_extract_bytes()
    real_size = _source_size(source)
    with _open_zip(source) as zf:
        infos = zf.infolist()
    if len(infos) > max_members:
        raise ArchiveError(f"The archive holds {len(infos)} entries; the limit is {max_members}. Split it.")
    members, total, packed = [], 0, 0
    for info in infos:
        rel = _member_path(info)
        if rel is None:
            continue
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{info.filename!r} is encrypted: upload an archive without a password.")
        total += info.file_size
        packed += info.compress_size
        if info.file_size > 1_000_000 and info.file_size > max_ratio * max(info.compress_size, 1):
            raise ArchiveError(
                f"{info.filename!r} inflates {info.file_size / max(info.compress_size, 1):.0f}-fold, "
                "which looks like a zip bomb; it was refused."
            )
        members.append((info, rel))
    if total > max_total_bytes:
        raise ArchiveError(
            f"The archive would inflate to {_size_text(total)}; the limit is {_size_text(max_total_bytes)} "
            f"(set {MAX_EXTRACT_ENV} to raise it)."
        )
    # Members that overlap, or headers that overstate their compressed size, claim more compressed
    # bytes than the file holds: the ratio check below would then be measured against a fiction.
    if real_size is not None and packed > real_size:
        raise ArchiveError("The archive's headers claim more compressed data than the file holds (it is damaged or "
                           "crafted to look smaller than it inflates); it was refused.")
    if total > 1_000_000 and total > max_ratio * max(packed, 1):
        raise ArchiveError("The archive inflates far more than real images do, which looks like a zip bomb; it was refused.")
    if not any(not info.is_dir() for info, _ in members):
        raise ArchiveError("The archive is empty: it holds no files.")
    return members


def safe_extract_zip(
    source: ZipSource,
    dest: str | os.PathLike,
    *,
    max_total_bytes: int | None = None,
    max_members: int = MAX_MEMBERS,
    max_ratio: float = MAX_RATIO,
    min_free_bytes: int = MIN_FREE_BYTES,
    check: Callable[[Path], object] | None = None,
) -> Path:
    """Extract ``source`` into the new folder ``dest`` (refused if it exists) and return it.

    A single top-level folder in the archive (``drive/images/...``) is flattened so that
    ``dest`` holds its contents directly.

    Args:
        source, max_total_bytes, max_members, max_ratio: as for :func:`check_zip`; the bytes really
            inflated are counted too and stop the extraction at ``max_total_bytes``.
        dest: the folder to create.
        min_free_bytes: free disk space that must remain, checked before and while writing.
        check: called with the unpacked (still hidden) folder before it is moved to ``dest``; a UserError
            it raises refuses the archive like any other problem (e.g. ``engine.training.data.load_dataset``, so
            that a zip without a data set never appears among the data sets).

    Returns:
        ``dest``.

    Raises:
        ArchiveError: with a sentence; nothing is left behind (the partial folder is removed).
    """
    dest = Path(dest)
    if dest.exists():
        raise ArchiveError(f"{dest.name} exists already: choose another name or delete the old one first.")
    if max_total_bytes is None:
        max_total_bytes = max_extract_bytes()
    members = check_zip(source, max_total_bytes=max_total_bytes, max_members=max_members, max_ratio=max_ratio)
    tops = {rel.parts[0] for _, rel in members}
    strip = len(tops) == 1 and all(len(rel.parts) > 1 or info.is_dir() for info, rel in members)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(dest.parent, sum(info.file_size for info, _ in members), min_free_bytes)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    written, next_disk_check = 0, _DISK_CHECK_EVERY
    try:
        with _open_zip(source) as zf:
            for info, rel in members:
                parts = rel.parts[1:] if strip else rel.parts
                if not parts:
                    continue
                target = tmp.joinpath(*parts)
                if not paths.is_inside(target, tmp):  # belt and braces after the name checks
                    raise ArchiveError(f"{info.filename!r} would be written outside the data set folder; refused.")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_total_bytes:
                            raise ArchiveError(
                                f"The archive inflates past {_size_text(max_total_bytes)} (more than its headers "
                                f"declare); it was refused. The limit is set by {MAX_EXTRACT_ENV}."
                            )
                        if written >= next_disk_check:  # another program may be filling the disk meanwhile
                            _check_free_space(tmp, len(chunk), min_free_bytes)
                            next_disk_check += _DISK_CHECK_EVERY
                        out.write(chunk)
        if check is not None:
            _run_check(check, tmp)
        os.replace(tmp, dest)
    except ArchiveError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, zlib.error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        detail = str(exc) or ("it ends before its data does" if isinstance(exc, EOFError) else type(exc).__name__)
        raise ArchiveError(f"The archive could not be unpacked ({detail}); create it again with a zip tool.") from None
    except BaseException:  # e.g. KeyboardInterrupt: still leave nothing half-written behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def unpack_dataset_zip(source: ZipSource, name: str, check: Callable[[Path], object] | None = None) -> Path:
    """Unpack an uploaded data set into ``datasets_dir()/<name>-<content hash>`` and return that folder.

    The folder's name is generated: the upload's name reduced to letters, digits, '-' and '_', then
    the first 8 hex digits of the archive's SHA-256. The same archive uploaded again gives the folder
    it already unpacked; another archive under the same name gets a folder of its own.

    Args:
        check: judges the unpacked folder (e.g. ``engine.training.data.load_dataset``); a UserError refuses the
            upload. A folder that exists already is judged too, and removed when it fails (an older
            version kept refused uploads).

    Raises:
        ArchiveError: the archive is unsafe or unreadable, or ``check`` refused it ("<name> was not kept:
            <why>"); nothing is left in the data home.
    """
    data = _read_source(source)
    folder = paths.datasets_dir() / f"{dataset_name(name)}-{hashlib.sha256(data).hexdigest()[:8]}"
    try:
        if folder.is_dir():  # extraction renames a finished folder into place, so one that exists is whole
            if check is not None:
                try:
                    _run_check(check, folder)
                except ArchiveError:
                    shutil.rmtree(folder, ignore_errors=True)
                    raise
            return folder
        return safe_extract_zip(data, folder, check=check)
    except ArchiveError as exc:
        if getattr(exc, "refused_by_check", False):
            raise ArchiveError(f"{Path(str(name)).name} was not kept: {exc}") from None
        raise


def _run_check(check: Callable[[Path], object], folder: Path) -> None:
    """``check(folder)``; its UserError becomes an ArchiveError that speaks of the archive, not the folder."""
    try:
        check(folder)
    except UserError as exc:
        text = str(exc)
        for where in {str(folder), str(folder.resolve())}:
            text = text.replace(where + os.sep, "").replace(where, "it")
        error = ArchiveError(text)
        error.refused_by_check = True
        raise error from None


def _read_source(source: ZipSource) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            return Path(source).read_bytes()
        except FileNotFoundError:
            raise ArchiveError(f"No such zip file: {source}.") from None
    if hasattr(source, "seek"):
        source.seek(0)
    return source.read()


def zip_folder(folder: str | os.PathLike, out_path: str | os.PathLike,
               include: tuple[str, ...] | None = None) -> Path:
    """Zip every file under ``folder`` (paths relative to it) into ``out_path``, atomically.

    ``include``: only these top-level entries of ``folder`` (files or folders); default everything.
    Hidden files (in-flight ``.name.tmp`` writes) and ``out_path`` itself are never included.
    """
    folder, out_path = Path(folder), Path(out_path)
    roots = [folder / name for name in include] if include is not None else [folder]
    with paths.atomic_writer(out_path) as fh:  # streamed to disk: memory does not grow with the files zipped
        with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for root in roots:
                for path in sorted([root] if root.is_file() else root.rglob("*")):
                    rel = path.relative_to(folder)
                    if (path.is_file() and path.resolve() != out_path.resolve()
                            and not any(part.startswith(".") for part in rel.parts)):
                        zf.write(path, rel.as_posix())
    return out_path
