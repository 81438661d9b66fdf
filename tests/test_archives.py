"""Safe unpacking of uploaded zips (storage/archives.py): real zip files, real folders."""
from __future__ import annotations

import io
import re
import stat
import zipfile

import pytest

from storage import archives


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
    with pytest.raises(archives.ArchiveError, match="GB"):
        archives.safe_extract_zip(data, home / "x", max_total_bytes=15_000)
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
