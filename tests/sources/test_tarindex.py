"""The tar indexer (``sources/tarindex.py``): the direct header reader agrees with the standard library's."""

from __future__ import annotations

import tarfile
from pathlib import Path

from tests.support.tars import add_file as _file


def test_header_reader_agrees_with_tarfile(sample, tmp_path):
    """The direct header reader and the standard library's give the same members, nested tars
    included; features the direct reader leaves alone (GNU long names, pax) go to tarfile."""
    from airflow_resnet_prep.sources import tarindex

    def both(path: Path, start: int = 0, size: int | None = None):
        total = size if size is not None else path.stat().st_size - start
        with open(path, "rb") as fh:
            fast = tarindex._fast_index(fh, str(path), start, total)
            slow = list(tarindex._tarfile_index(fh, str(path), start, total))
        return fast, slow

    fast, slow = both(sample.train_tar)
    assert fast == slow and len(fast) == len(sample.synsets)
    for member in fast:  # the per-class tars, read in place
        inner_fast, inner_slow = both(sample.train_tar, member.offset, member.size)
        assert inner_fast == inner_slow and inner_fast
    assert both(sample.val_tar)[0] == both(sample.val_tar)[1]

    long_dir = "n01440764/" + "d" * 120  # a POSIX ustar prefix, and a GNU long name
    for fmt, handled in (
        (tarfile.USTAR_FORMAT, True),
        (tarfile.GNU_FORMAT, False),
        (tarfile.PAX_FORMAT, False),
    ):
        path = tmp_path / f"f{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as tar:
            _file(tar, f"{long_dir}/x.JPEG", b"\xff\xd8data\xff\xd9")
        fast, slow = both(path)
        assert slow[0].path == f"{long_dir}/x.JPEG"
        assert (fast == slow) if handled else fast is None


def _header_fields(tar: bytes, **fields: bytes) -> bytes:
    """``tar`` with its first header's fields replaced (name: offset) and its checksum made right again."""
    at = {"name": 0, "size": 124, "linkname": 157, "uname": 265, "gname": 297, "pad": 500}
    header = bytearray(tar[:512])
    for name, value in fields.items():
        header[at[name] : at[name] + len(value)] = value
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header) + tar[512:]


def test_header_reader_checks_what_tarfile_checks(tmp_path):
    """Through a store's positioned reads as through a file: the same members as tarfile for headers
    whose bytes sum high (the checksum is summed 256 bytes at a time), fields in other spellings
    (base-256, space-terminated, no terminator), and no member from a header whose checksum is wrong."""
    import functools
    import io

    from airflow_resnet_prep.sources import tarindex
    from airflow_resnet_prep.storage import LocalStore
    from airflow_resnet_prep.storage.rangefile import RangeFile

    def tar_of(name: str, data: bytes) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            _file(tar, name, data)
        return buf.getvalue()

    data = b"\xff\xd8" + bytes(range(256)) * 3 + b"\xff\xd9"
    plain = tar_of("x.JPEG", data)
    high = tar_of("\u00ff" * 47 + ".JPEG", data)  # a name of 94 bytes 0xc3 0xbf
    cases = {
        "plain": plain,
        "high bytes": _header_fields(  # each half of the header sums to over 40,000
            high, linkname=b"\xff" * 100, uname=b"\xfe" * 32, gname=b"\xfd" * 32, pad=b"\xff" * 12
        ),
        "base-256 size": _header_fields(plain, size=b"\x80" + len(data).to_bytes(11, "big")),
        "space-ended size": _header_fields(plain, size=b"%011o " % len(data)),
        "12-digit size": _header_fields(plain, size=b"%012o" % len(data)),
    }
    for case, blob in cases.items():
        path = tmp_path / "t.tar"
        path.write_bytes(blob)
        store = LocalStore(path)
        ranged = RangeFile(functools.partial(store.read_range, ""), len(blob), costly_reads=False)
        with open(path, "rb") as fh:
            slow = list(tarindex._tarfile_index(fh, case, 0, len(blob)))
            assert tarindex._fast_index(fh, case, 0, len(blob)) == slow, case
        assert tarindex._fast_index(ranged, case, 0, len(blob)) == slow and len(slow) == 1, case
        store.close()
    wrong = bytearray(plain)
    wrong[0] ^= 1  # the name changed, the checksum not: tarfile is left to report the damage
    assert tarindex._fast_index(io.BytesIO(bytes(wrong)), "wrong", 0, len(wrong)) is None  # type: ignore[arg-type]


def test_a_negative_member_size_is_refused_naming_the_member(tmp_path):
    """A size field that reads as a negative number (octal "-5", or GNU base-256 with its sign byte) is
    damage, reported with the member's name, never a member of negative size."""
    import io

    import pytest

    from airflow_resnet_prep.errors import SourceError
    from airflow_resnet_prep.sources import tarindex

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _file(tar, "n01440764_1.JPEG", b"\xff\xd8" + bytes(600) + b"\xff\xd9")
    for case, size in (("octal", b"-5\0"), ("base-256", b"\xff" * 12)):
        path = tmp_path / f"{case}.tar"
        path.write_bytes(_header_fields(buf.getvalue(), size=size))
        with open(path, "rb") as fh, pytest.raises(SourceError, match=r"n01440764_1\.JPEG.*negative size"):
            list(tarindex.iter_tar(fh, str(path)))
