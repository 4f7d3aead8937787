"""The ``nvidia`` converter's one framing loop: a run of images framed in memory as RecordIO records.

Both ways of writing a ``.rec`` use it: a unit (:meth:`.recordio.RecordIOConverter.write_unit`) frames
its items run by run and appends each run to its piece; the one-machine path (:mod:`.recordio_direct`)
frames runs in several processes and writes each at its offset in the split's file. A run's
:class:`Framed` says what it wrote without its bytes (size, record offsets, CRC-32C, the images left
out), and :func:`unit_result` turns a unit's runs, in order, into its done record: the same record
whichever way the unit was written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from airflow_resnet_prep.catalog.model import Source
from airflow_resnet_prep.converters.base import (
    Unit,
    UnitResult,
    WorkItem,
    bad_image,
    read_or_report,
)
from airflow_resnet_prep.converters.decodecheck import make_decoder
from airflow_resnet_prep.errors import BadImageError, PrepError
from airflow_resnet_prep.formats.crc32c import combine_all, crc32c_of
from airflow_resnet_prep.formats.jpeg import probe, resize_short_side
from airflow_resnet_prep.formats.recordio import MAX_RECORD, pack_header, record_buffers

# Records framed in memory and written at once by the one-machine path: ~14 MB of ImageNet images,
# few large writes; from a bucket twice as many, so that close images still share requests (a run's
# images are read ahead together).
CHUNK_RECORDS = 128
REMOTE_CHUNK_RECORDS = 256
# A unit streams its runs into its piece (whose store buffers what it uploads): small runs keep its
# memory where it was when it framed record by record.
UNIT_RUN_RECORDS = 16

_T = TypeVar("_T")


@dataclass
class Framed:
    """What a run of records holds, without its bytes (those went to the file)."""

    size: int = 0
    offsets: list[list[int]] = field(default_factory=list)  # [index, offset within the run]
    crc: int = 0  # CRC-32C of the run's bytes, summed by the process that framed them
    seconds: float = 0.0  # reading, framing and writing the run: its share of the unit's time
    result: UnitResult = field(default_factory=lambda: UnitResult(unit=-1, split=""))


def chunked(items: Sequence[_T], size: int = CHUNK_RECORDS) -> list[Sequence[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def frame_run(
    params: dict[str, Any], sources: list[Source], split: str, reads: Iterable[tuple[WorkItem, bytes]]
) -> tuple[Framed, list[Any]]:
    """Frame every ``(item, image bytes)`` of ``reads`` (a converter's params: ``resize``, ``quality``,
    ``on_bad_image``, ``decode_check``); return the run's description and its buffers, in file order.
    An image that fails follows ``on_bad_image``; one over RecordIO's limit fails the run."""
    on_bad, resize, quality = params["on_bad_image"], params["resize"], params["quality"]
    decoder = make_decoder(params)
    framed = Framed(result=UnitResult(unit=-1, split=split))
    result = framed.result
    buffers: list[Any] = []
    size = crc = 0
    for item, raw in reads:
        where = sources[item.src].describe(item.ref)
        data = read_or_report(None, item, where, on_bad, result, raw)
        if data is None:
            continue
        try:
            probe(data, where)  # validates (truncation, unknown format) without decoding pixels
            if resize:
                data = resize_short_side(data, where, resize, quality)[0]
            if decoder is not None:
                decoder.check(data, where)
        except BadImageError as exc:
            bad_image(exc, item, on_bad, result)
            continue
        if len(data) + 24 > MAX_RECORD:
            raise PrepError(f"{where}: {len(data):,} bytes is over RecordIO's record limit of 2^29-1 bytes")
        record = record_buffers(pack_header(float(item.label), item.index), data)
        framed.offsets.append([item.index, size])
        size += sum(len(b) for b in record)
        buffers.extend(record)
        # Summed record by record, while the image is still in the CPU's cache from its read.
        crc = crc32c_of(record, crc)
        result.records += 1
        result.bytes_in += item.size
    framed.size = size
    # Summed where the bytes are framed, from the buffers about to be written: the unit's CRC joins the
    # runs' (and finish joins the units').
    framed.crc = crc
    return framed, buffers


def unit_result(unit: Unit, runs: Sequence[Framed]) -> UnitResult:
    """The done record of ``unit`` from its runs in file order: offsets relative to the unit's first
    byte (finish adds where the unit starts), its size and CRC-32C, what was left out."""
    result = UnitResult(unit=unit.id, split=unit.split)
    offsets: list[list[int]] = []
    position = 0
    seconds = 0.0
    for run in runs:
        offsets.extend([index, position + off] for index, off in run.offsets)
        position += run.size
        seconds += run.seconds
        result.records += run.result.records
        result.bytes_in += run.result.bytes_in
        result.skipped.extend(run.result.skipped)
        result.reencoded.extend(run.result.reencoded)
        reads = run.result.extra.get("source_reads")
        if reads:
            total = result.extra.setdefault("source_reads", {"requests": 0, "bytes_read": 0})
            for k in total:
                total[k] += reads[k]
    result.add_output(unit.outputs[0], position, result.records, combine_all((r.crc, r.size) for r in runs))
    result.extra["offsets"] = offsets
    result.seconds = round(seconds, 3)
    return result
