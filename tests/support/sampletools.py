"""Helpers shared by tests that need the sample set in other layouts."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def sample_conf(sample, data_dir: Path, **overrides: object) -> dict[str, object]:
    """A run's conf for the sample set: the three sources, ``data_dir``, a small reference output
    (2 + 1 shards) and one process; ``overrides`` win."""
    return {
        "implementation": "reference",
        "data_dir": str(data_dir),
        "train_source": str(sample.train_tar),
        "val_source": str(sample.val_tar),
        "labels_source": str(sample.labels),
        "train_shards": 2,
        "val_shards": 1,
        "workers": 1,
        **overrides,
    }


def extract_sample_tar(tar_path: Path, dest: Path) -> None:
    """Extract a sample tar as a user would with the standard library: the train tar's per-class tars
    into ``dest/<synset>/<image>``, the flat val tar into ``dest/<image>``."""
    with tarfile.open(tar_path) as outer:
        for member in outer.getmembers():
            data = outer.extractfile(member).read()
            if member.name.endswith(".tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as inner:
                    inner.extractall(dest / member.name[:-4], filter="data")
            else:
                (dest / member.name).parent.mkdir(parents=True, exist_ok=True)
                (dest / member.name).write_bytes(data)


# -- JPEGs whose header parses but whose data TensorFlow's decoder refuses (issue 20) --------------------
def _segments(jpeg: bytes) -> list[tuple[int, int, int]]:
    """(position of the FF, marker, segment length) of each header segment, up to and with SOS."""
    out, i = [], 2
    while True:
        marker, length = jpeg[i + 1], (jpeg[i + 2] << 8) | jpeg[i + 3]
        out.append((i, marker, length))
        if marker == 0xDA:
            return out
        i += 2 + length


def corrupt_huffman_table(jpeg: bytes) -> bytes:
    """``jpeg`` with its first Huffman table made impossible: three codes of length 1 (a prefix code has
    room for two). The header still parses (no header probe reads DHT tables); libjpeg refuses it with
    "Bogus Huffman table definition"."""
    pos = next(p for p, marker, _ in _segments(jpeg) if marker == 0xC4)
    out = bytearray(jpeg)
    out[pos + 5] = 3  # payload: FF C4 Lh Ll, Tc/Th, then 16 code counts: counts[0] = codes of length 1
    return bytes(out)


def second_sof_in_scan(jpeg: bytes) -> bytes:
    """``jpeg`` with a copy of its frame header (SOF) inserted in the middle of its entropy-coded data,
    where a marker ends the scan early; libjpeg then refuses "two SOF markers". The header and the
    end-of-image marker are untouched."""
    segments = _segments(jpeg)
    pos, _, length = next(s for s in segments if s[1] in (0xC0, 0xC1, 0xC2))
    sof = jpeg[pos : pos + 2 + length]
    sos_pos, _, sos_len = segments[-1]
    scan_start = sos_pos + 2 + sos_len
    mid = scan_start + (len(jpeg) - scan_start) // 2
    while jpeg[mid - 1] == 0xFF:  # never between an FF and its stuffed 00
        mid += 1
    return jpeg[:mid] + sof + jpeg[mid:]
