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
