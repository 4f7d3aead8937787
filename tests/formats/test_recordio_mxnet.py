"""Our RecordIO against real MXNet 1.9.1 (its own venv, via tests/support/mxnet_tools.py): golden bytes, MXNet
reading our files, MXNet's writer producing the same bytes, and a full im2rec run.

These tests fail, never skip, when the MXNet venv is missing: run `make install`.
"""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import pytest
from PIL import Image

from airflow_resnet_prep.formats.recordio import (
    MAGIC,
    frame,
    framed_size,
    iter_records,
    pack_header,
    unpack_header,
    write_record,
)
from tests.support.mxnet_tools import (
    pack_and_write_with_mxnet,
    read_records_with_mxnet,
    require_mxnet,
    run_im2rec,
    write_with_mxnet,
)

M = b"\x0a\x23\xd7\xce"  # MAGIC, little-endian
FLOAT_WITH_MAGIC_BITS = struct.unpack("<f", M)[0]


@pytest.fixture(scope="module")
def mxnet() -> None:
    """Fails (with the `make install` hint) rather than skips when the MXNet venv is unusable."""
    require_mxnet()


def test_golden_bytes_from_the_spec() -> None:
    """Three records whose framed bytes are written out by hand from SPEC §4."""
    header = (
        b"\x00\x00\x00\x00" + b"\x00\x00\x40\x40" + b"\x07" + b"\x00" * 7 + b"\x00" * 8
    )  # flag 0, 3.0, 7, 0
    assert pack_header(3.0, 7) == header
    cases = [
        # No magic: magic, lrec(0, 34), payload, 2 bytes of padding.
        (b"0123456789", M + b"\x22\x00\x00\x00" + header + b"0123456789" + b"\x00\x00"),
        # Magic at image offset 4 = payload offset 28 (aligned): split into cflag 1 (28 bytes) and
        # cflag 3 (3 bytes + 1 padding); the 4 magic bytes are dropped.
        (
            b"abcd" + M + b"xyz",
            M + b"\x1c\x00\x00\x20" + header + b"abcd" + M + b"\x03\x00\x00\x60" + b"xyz" + b"\x00",
        ),
        # Magic at image offset 2 = payload offset 26 (unaligned): not escaped.
        (b"ab" + M + b"cdef", M + b"\x22\x00\x00\x00" + header + b"ab" + M + b"cdef" + b"\x00\x00"),
    ]
    for image, expected in cases:
        fh = io.BytesIO()
        assert write_record(fh, header, image) == len(expected)
        assert fh.getvalue() == expected
        assert b"".join(bytes(b) for b in frame(header + image)) == expected


def _write_ours(rec: Path, idx: Path, records: list[tuple[int, bytes, bytes]]) -> None:
    """Our writer: (key, header, image) per record, plus an im2rec-style ``key\\toffset`` index."""
    offset = 0
    with open(rec, "wb") as fh, open(idx, "w") as fi:
        for key, header, image in records:
            fi.write(f"{key}\t{offset}\n")
            offset += write_record(fh, header, image)


def _images() -> list[bytes]:
    """Image bodies that exercise every framing path, plus random data."""
    rnd = random.Random(7)
    images = [
        b"",
        b"x",
        b"xy",
        b"xyz",
        b"abcd" + M + b"xyz",  # aligned in the payload
        b"ab" + M + b"cdef",  # unaligned
        M,  # at payload offset 24
        M * 3 + b"tail",  # consecutive
        b"1234" + M + b"5678" + M,  # ends with an aligned magic: empty last part
        b"12" + M[:2],  # partial magic at the end
        rnd.randbytes(200_003),
    ]
    for _ in range(20):
        body = bytearray(rnd.randbytes(rnd.randrange(0, 300)))
        for _ in range(rnd.randrange(0, 4)):
            at = rnd.randrange(0, len(body) + 1)
            body[at:at] = M
        images.append(bytes(body))
    return images


def test_mxnet_reads_our_records(tmp_path: Path, mxnet: None) -> None:
    images = _images()
    items = [(1000 + i, float(i % 7), i, image) for i, image in enumerate(images)]
    # Header fields carrying the magic: label bits at payload offset 4, id at offset 8.
    items += [(1, FLOAT_WITH_MAGIC_BITS, 3, b"img"), (2, 4.0, MAGIC, b"img" + M), (3, 5.0, 42, M + b"img")]
    rec, idx = tmp_path / "ours.rec", tmp_path / "ours.idx"
    _write_ours(rec, idx, [(key, pack_header(label, id1), image) for key, label, id1, image in items])

    got = read_records_with_mxnet(rec, idx)
    assert [r.key for r in got] == [key for key, *_ in items]
    for r, (key, label, id1, image) in zip(got, items, strict=True):
        assert (r.flag, r.label, r.id, r.id2) == (
            0,
            struct.unpack("<f", struct.pack("<f", label))[0],
            id1,
            0,
        ), key
        assert r.image == image, key
        assert r.payload == pack_header(label, id1) + image, key
    # Our reader agrees with MXNet's on the same file.
    ours = list(iter_records(rec))
    assert [p for _, p in ours] == [r.payload for r in got]
    assert [
        f"{key}\t{off}\n" for (key, *_), (off, _) in zip(items, ours, strict=True)
    ] == idx.read_text().splitlines(keepends=True)


def test_mxnet_writer_produces_identical_bytes(tmp_path: Path, mxnet: None) -> None:
    images = _images()
    # Raw payloads through MXRecordIO (dmlc's writer), including magic at payload offset 0.
    raw = [(i, image) for i, image in enumerate([*images, M + b"abc", M * 2, b"", b"abcd" * 3])]
    write_with_mxnet(tmp_path / "mx_raw.rec", tmp_path / "mx_raw.idx", raw)
    with open(tmp_path / "ours_raw.rec", "wb") as fh, open(tmp_path / "ours_raw.idx", "w") as fi:
        for key, payload in raw:
            fi.write(f"{key}\t{fh.tell()}\n")
            fh.writelines(frame(payload))
    mx_raw = (tmp_path / "mx_raw.rec").read_bytes()
    assert (tmp_path / "ours_raw.rec").read_bytes() == mx_raw
    assert (tmp_path / "ours_raw.idx").read_text() == (tmp_path / "mx_raw.idx").read_text()
    # MXNet really escaped: the file is longer than unsplit framing would make it.
    assert (
        len(mx_raw) == sum(framed_size(p) for _, p in raw) > sum(8 + len(p) + (-len(p) % 4) for _, p in raw)
    )

    # mx.recordio.pack + write_idx, as im2rec --pass-through does, against pack_header + write_record.
    items = [(i, float(i % 1000), 1_281_166 - i, image) for i, image in enumerate(images)]
    items += [(99, FLOAT_WITH_MAGIC_BITS, MAGIC, M)]
    pack_and_write_with_mxnet(tmp_path / "mx.rec", tmp_path / "mx.idx", items)
    _write_ours(
        tmp_path / "ours.rec",
        tmp_path / "ours.idx",
        [(key, pack_header(label, id1), image) for key, label, id1, image in items],
    )
    assert (tmp_path / "ours.rec").read_bytes() == (tmp_path / "mx.rec").read_bytes()
    assert (tmp_path / "ours.idx").read_text() == (tmp_path / "mx.idx").read_text()


def _jpeg(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _make_tree(root: Path) -> dict[str, bytes]:
    """A tiny extracted ImageNet-style tree: ``<synset>/<synset>_<n>.JPEG``."""
    files: dict[str, bytes] = {}
    for c, synset in enumerate(["n01440764", "n01443537", "n15075141"]):
        for n in range(3):
            data = _jpeg((40 * c, 80 * n, 200), (16 + 8 * n, 12 + 4 * c))
            if c == 1 and n == 2:
                # Trailing bytes after EOI (decoders ignore them) that put the magic at an aligned
                # payload offset, so im2rec's output holds a split record.
                data += b"\0" * (-len(data) % 4) + M + b"trail"
            files[f"{synset}/{synset}_{n + 1}.JPEG"] = data
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_im2rec_on_a_tiny_tree(tmp_path: Path, mxnet: None) -> None:
    root = tmp_path / "train"
    files = _make_tree(root)
    out = tmp_path / "out"
    out.mkdir()
    run_im2rec(root, out / "train")

    # .lst: walk order (sorted folders, sorted files), 0-based folder labels, then random.seed(100) shuffle.
    walk = [
        (i, float(sorted({r.split("/")[0] for r in files}).index(rel.split("/")[0])), rel)
        for i, rel in enumerate(sorted(files))
    ]
    random.Random(100).shuffle(walk)
    expected_lst = "".join(f"{i}\t{label:f}\t{rel}\n" for i, label, rel in walk)
    assert (out / "train.lst").read_text() == expected_lst

    # .rec/.idx: our writer, fed the same list, produces the same bytes.
    ours_rec, ours_idx = tmp_path / "ours.rec", tmp_path / "ours.idx"
    _write_ours(ours_rec, ours_idx, [(i, pack_header(label, i), files[rel]) for i, label, rel in walk])
    im2rec_rec = (out / "train.rec").read_bytes()
    assert ours_rec.read_bytes() == im2rec_rec
    assert ours_idx.read_text() == (out / "train.idx").read_text()
    assert len(im2rec_rec) == sum(len(d) + 24 + 8 + (-(len(d) + 24) % 4) for d in files.values()) + 4

    # And the records carry the files unchanged.
    got = [unpack_header(p) for _, p in iter_records(out / "train.rec")]
    assert got == [(0, label, i, 0, files[rel]) for i, label, rel in walk]
