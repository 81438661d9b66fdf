"""Safe unpacking of uploaded zips (storage/archives.py): real zip files, real folders."""
from __future__ import annotations

import io
import os
import re
import shutil
import stat
import zipfile

import pytest

from storage import archives
from storage.errors import UserError


def _zip(entries: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


@pytest.mark.parametrize(
    "data, fragment",
    [
        (_zip({"../evil.png": b"x"}), "leaves its folder"),
        (_zip({"images/../../evil.png": b"x"}), "leaves its folder"),
        (_zip({"/etc/evil.png": b"x"}), "absolute path"),
        (_zip({"C:/evil.png": b"x"}), "absolute path"),
        (_zip({"ok.png": b"x"}, symlink="link.png"), "symbolic link"),
        (_zip({"bomb.bin": b"\0" * 20_000_000}), "zip bomb"),
        (_zip({}), "empty"),
        (b"not a zip at all", "not a zip"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "drive-letter", "symlink", "bomb", "empty", "garbage"],
)
def test_bad_archives_are_refused_with_a_sentence_and_leave_nothing(home, data, fragment):
    with pytest.raises(archives.ArchiveError, match=fragment):
        archives.unpack_dataset_zip(data, "upload.zip")
    assert list((home / "datasets").iterdir()) == []
    assert not (home.parent / "evil.png").exists()


def test_total_size_limit_is_enforced(home):
    data = _zip({"a.bin": b"ab" * 5000, "b.bin": b"cd" * 5000})
    with pytest.raises(archives.ArchiveError, match="would inflate to 20 kB; the limit is 15 kB"):
        archives.safe_extract_zip(data, home / "x", max_total_bytes=15 * 1024)
    assert not (home / "x").exists()


def test_single_top_folder_is_flattened_and_junk_skipped(home):
    data = _zip({"drive/images/1.png": b"i", "drive/masks/1.png": b"m", "__MACOSX/drive/._1.png": b"j"})
    folder = archives.unpack_dataset_zip(data, "My DRIVE set.zip")
    assert folder.parent == home / "datasets" and re.fullmatch(r"My_DRIVE_set-[0-9a-f]{8}", folder.name)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "images/1.png",
        "masks/1.png",
    ]


def test_existing_data_set_is_not_overwritten(home):
    upload = _zip({"images/1.png": b"i", "masks/1.png": b"m"})
    first = archives.unpack_dataset_zip(upload, "set")
    second = archives.unpack_dataset_zip(_zip({"images/2.png": b"i", "masks/2.png": b"m"}), "set")  # other content
    assert first != second and (first / "images" / "1.png").is_file() and not (first / "images" / "2.png").exists()
    assert archives.unpack_dataset_zip(upload, "set") == first  # the same upload again
    with pytest.raises(archives.ArchiveError, match="exists already"):
        archives.safe_extract_zip(_zip({"images/3.png": b"i"}), first)


def test_zip_folder_round_trips(home, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(b"a")
    (src / "sub" / "b.png").write_bytes(b"b")
    (src / "sub" / ".b.png.123.tmp").write_bytes(b"half")
    (src / "input").mkdir()
    (src / "input" / "c.png").write_bytes(b"c")
    out = archives.zip_folder(src, tmp_path / "out.zip")
    assert sorted(zipfile.ZipFile(out).namelist()) == ["a.png", "input/c.png", "sub/b.png"]
    only = archives.zip_folder(src, src / "results.zip", include=("sub", "a.png"))
    assert sorted(zipfile.ZipFile(only).namelist()) == ["a.png", "sub/b.png"]


def _patch_sizes(data: bytes, *, compress_size: int | None = None, file_size: int | None = None) -> bytes:
    """The zip ``data`` (one member) with its local and central headers rewritten to declare other sizes."""
    raw = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 18), (b"PK\x01\x02", 20)):  # compressed size, then size
        at = raw.index(signature)
        if compress_size is not None:
            raw[at + offset:at + offset + 4] = compress_size.to_bytes(4, "little")
        if file_size is not None:
            raw[at + offset + 4:at + offset + 8] = file_size.to_bytes(4, "little")
    return bytes(raw)


def _leftovers(home) -> list[str]:
    return sorted(p.name for p in (home / "datasets").iterdir())


def test_headers_that_overstate_the_compressed_size_are_refused(home):
    # 30 MB of zeros deflate to ~30 kB (a 1000-fold bomb); the headers claim 3 MB compressed, so the
    # declared ratio (10) looks like an ordinary image's. Scaled down from 2 MB -> 2 GB claiming 100 MB.
    honest = _zip({"images/big.png": b"\0" * 30_000_000})
    crafted = _patch_sizes(honest, compress_size=3_000_000)
    assert zipfile.ZipFile(io.BytesIO(crafted)).infolist()[0].compress_size == 3_000_000  # the lie is read back
    with pytest.raises(archives.ArchiveError, match="headers claim more compressed data than the file holds"):
        archives.unpack_dataset_zip(crafted, "upload.zip")
    assert _leftovers(home) == []


def test_a_member_larger_than_its_header_says_is_refused_and_leaves_nothing(home):
    data = _patch_sizes(_zip({"images/a.png": bytes(range(256)) * 8192}), file_size=1024)  # 2 MB declared as 1 kB
    with pytest.raises(archives.ArchiveError, match="could not be unpacked"):
        archives.unpack_dataset_zip(data, "upload.zip")
    assert _leftovers(home) == []


def test_the_extraction_limit_is_a_setting(home, monkeypatch):
    monkeypatch.setenv(archives.MAX_EXTRACT_ENV, "1")
    data = _zip({"images/a.png": os.urandom(2 * 1024**2)})  # incompressible: no ratio check applies
    with pytest.raises(archives.ArchiveError, match=f"limit is 1 MB \\(set {archives.MAX_EXTRACT_ENV} to raise it\\)"):
        archives.unpack_dataset_zip(data, "upload.zip")
    assert _leftovers(home) == []


def test_an_archive_within_the_set_limit_is_unpacked(home, monkeypatch):
    monkeypatch.setenv(archives.MAX_EXTRACT_ENV, "1")
    folder = archives.unpack_dataset_zip(_zip({"images/a.png": os.urandom(512 * 1024), "masks/a.png": b"m"}),
                                         "upload.zip")
    assert (folder / "images" / "a.png").stat().st_size == 512 * 1024


@pytest.mark.parametrize("value", ["lots", "-5", "0", "nan", "inf"])
def test_a_bad_extraction_limit_setting_is_a_sentence(home, monkeypatch, value):
    monkeypatch.setenv(archives.MAX_EXTRACT_ENV, value)
    with pytest.raises(archives.ArchiveError, match=f"{archives.MAX_EXTRACT_ENV} must be a positive number"):
        archives.unpack_dataset_zip(_zip({"images/a.png": b"i"}), "upload.zip")


def test_too_little_free_disk_space_is_refused_before_writing(home, tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(archives.ArchiveError, match="Not enough free disk space"):
        archives.safe_extract_zip(_zip({"images/a.png": b"i"}), tmp_path / "out" / "set", min_free_bytes=free + 10**12)
    assert list((tmp_path / "out").iterdir()) == []


def _refuse_without_images(folder):
    if not (folder / "images").is_dir():
        raise UserError(f"{folder} has no images/ folder: put the photographs in images/.")


@pytest.mark.parametrize("entries, kept", [
    ({"notes/readme.txt": b"no images"}, False),
    ({"set/images/a.png": b"x", "set/masks/a.png": b"y"}, True),
])
def test_a_refused_upload_leaves_nothing_behind(home, entries, kept):
    from storage import paths

    try:
        archives.unpack_dataset_zip(_zip(entries), "upload.zip", check=_refuse_without_images)
    except archives.ArchiveError as exc:
        assert str(exc) == "upload.zip was not kept: it has no images/ folder: put the photographs in images/."
    assert [p.name.startswith("upload-") for p in paths.datasets_dir().iterdir()] == ([True] if kept else [])


def test_a_refused_folder_left_by_an_older_version_is_removed(home):
    from storage import paths

    data = _zip({"notes/readme.txt": b"no images"})
    folder = archives.unpack_dataset_zip(data, "upload.zip")  # no check: kept, as older versions did
    with pytest.raises(archives.ArchiveError, match="was not kept"):
        archives.unpack_dataset_zip(data, "upload.zip", check=_refuse_without_images)
    assert (folder.exists(), list(paths.datasets_dir().iterdir())) == (False, [])
