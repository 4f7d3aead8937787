"""The WebDataset tar bytes: headers equal to Python's ``tarfile`` in ustar format with fixed fields, read
by GNU tar, and the reader's refusals (named file and offset)."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from airflow_resnet_prep.formats import wdstar


def archive(samples: dict[str, list[tuple[str, bytes]]]) -> tuple[bytes, list[list[wdstar.Component]]]:
    out, index = io.BytesIO(), []
    for key, parts in samples.items():
        buffers, components = wdstar.sample_members(key, parts, out.tell())
        out.write(b"".join(buffers))
        index.append(components)
    out.write(wdstar.END_OF_ARCHIVE)
    return out.getvalue(), index


SAMPLES = {
    "n01440764_10026": [("cls", b"0"), ("jpg", b"\xff\xd8" + bytes(700) + b"\xff\xd9"), ("json", b"{}")],
    "ILSVRC2012_val_00000001": [("cls", b"999"), ("jpg", bytes(512)), ("json", b'{"a": 1}')],
}


@pytest.mark.parametrize(
    ("name", "size"), [("a.jpg", 0), ("n01440764_10026.json", 65), ("x" * 100, 8**11 - 1)]
)
def test_header_is_tarfiles_ustar_header_with_fixed_fields(name: str, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
        size,
        0,
        0o644,
        0,
        0,
        "",
        "",
    )
    assert wdstar.header(name, size) == info.tobuf(tarfile.USTAR_FORMAT)


def test_tarfile_reads_every_member_with_deterministic_attributes() -> None:
    data, _ = archive(SAMPLES)
    assert len(data) % 512 == 0 and data.endswith(bytes(1024))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"{k}.{e}" for k, parts in SAMPLES.items() for e, _ in parts]
        for m, (_, payload) in zip(members, [p for parts in SAMPLES.values() for p in parts], strict=True):
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) == (
                0,
                0,
                0,
                "",
                "",
                0o644,
                tarfile.REGTYPE,
            )
            assert tar.extractfile(m).read() == payload


def test_gnu_tar_lists_and_extracts_it(tmp_path: Path) -> None:
    if shutil.which("tar") is None:
        pytest.fail("GNU tar is part of every supported system (DALI's wds2idx runs it)")
    data, _ = archive(SAMPLES)
    path = tmp_path / "s.tar"
    path.write_bytes(data)
    listing = subprocess.run(["tar", "tvf", str(path)], capture_output=True, text=True, check=True)
    assert listing.stderr == ""
    lines = listing.stdout.splitlines()
    assert len(lines) == 6 and all(line.startswith("-rw-r--r-- 0/0 ") for line in lines)
    subprocess.run(["tar", "xf", str(path), "-C", str(tmp_path)], check=True)
    assert (tmp_path / "ILSVRC2012_val_00000001.cls").read_bytes() == b"999"


def test_dali_index_lists_each_members_data_offset_size_and_name() -> None:
    data, index = archive(SAMPLES)
    text = wdstar.dali_index(index)
    lines = text.splitlines()
    assert text.endswith("\n") and lines[0] == "v1.2 2"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [f"{m.name.split('.')[1]} {m.offset_data} {m.size} {m.name}" for m in tar.getmembers()]
    assert lines[1] == " ".join(expected[:3]) and lines[2] == " ".join(expected[3:])
    with pytest.raises(wdstar.TarFormatError, match="empty archive"):
        wdstar.dali_index([])


def test_reader_gives_the_members_back_and_knows_our_headers() -> None:
    data, _ = archive(SAMPLES)
    found = list(wdstar.iter_entries(io.BytesIO(data), "s.tar"))
    assert [(e.name, d) for e, d in found] == [
        (f"{k}.{ext}", payload) for k, parts in SAMPLES.items() for ext, payload in parts
    ]
    assert all(e.deterministic for e, _ in found)
    other = io.BytesIO()
    with tarfile.open(fileobj=other, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("k.cls")
        info.size, info.mtime = 1, 1_700_000_000
        tar.addfile(info, io.BytesIO(b"1"))
    [(entry, payload)] = list(wdstar.iter_entries(io.BytesIO(other.getvalue()), "other.tar"))
    assert payload == b"1" and not entry.deterministic


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:-1024] + bytes(512), "one zero block at offset"),
        (lambda d: d[:700], "cut short"),
        (lambda d: d[:100] + b"X" + d[101:], "checksum mismatch"),
        (lambda d: d[:300], "truncated tar header at offset 0"),
    ],
)
def test_reader_names_the_file_and_offset_of_damage(damage, message: str) -> None:
    data, _ = archive(SAMPLES)
    with pytest.raises(wdstar.TarFormatError, match=f"^s.tar: .*{message}"):
        list(wdstar.iter_entries(io.BytesIO(damage(data)), "s.tar"))


def test_names_and_sizes_a_header_cannot_hold_are_refused() -> None:
    with pytest.raises(wdstar.TarFormatError, match="1 to 100 bytes"):
        wdstar.header("x" * 101, 1)
    with pytest.raises(wdstar.TarFormatError, match="more than a ustar header"):
        wdstar.header("a.jpg", 8**11)


def test_split_name_is_the_readers_split_at_the_first_dot_of_the_base_name() -> None:
    assert wdstar.split_name("n01440764_10026.jpg") == ("n01440764_10026", "jpg")
    assert wdstar.split_name("dir.x/k.seg.png") == ("dir.x/k", "seg.png")
    assert wdstar.member_size(0) == 512 and wdstar.member_size(1) == 1024 and wdstar.member_size(512) == 1024
