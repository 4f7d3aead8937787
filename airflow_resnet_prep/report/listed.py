"""Images the manifest lists as re-encoded or left out, previewed from their source through the catalog.

They are not in the output (left out), or not as they were (re-encoded), so the source shows why they
were listed; a re-encoded image found in the output (see :mod:`.stored`) is shown as stored too.
Reading is bounded: only the first :data:`MAX_LISTED_THUMBS` are read.
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_resnet_prep.catalog.model import ImageReader, ImageRef, Source
from airflow_resnet_prep.report.thumbs import Thumb, make_thumb


@dataclass(frozen=True)
class Listed:
    """An image the manifest lists as re-encoded or left out, with a preview from its source and, when it
    was found in the output, its stored version (``stored_file`` record ``stored_position``)."""

    synset: str
    name: str
    reason: str
    split: str
    thumb: Thumb
    stored: Thumb | None = None
    stored_file: str = ""
    stored_position: int = -1


MAX_LISTED_THUMBS = 48


def listed_images(
    entries: list[dict[str, str]],
    found: dict[tuple[str, str], tuple[str, ImageRef]],
    sources: dict[str, list[Source]],
    stored: dict[tuple[str, str], tuple[str, int, Thumb]] | None = None,
) -> list[Listed]:
    """Each manifest entry with its split, a source thumbnail (for the first few: reading stays bounded)
    and its ``stored`` thumbnail when there is one."""
    readers = {split: ImageReader(srcs) for split, srcs in sources.items()}
    out = []
    try:
        for i, entry in enumerate(entries):
            synset, name = str(entry.get("synset", "")), str(entry.get("name", ""))
            split, ref = found.get((synset, name), ("", None))
            if ref is None:
                thumb = Thumb(None, error="no preview: not in the catalog")
            elif i >= MAX_LISTED_THUMBS:
                thumb = Thumb(None, error=f"no preview: only the first {MAX_LISTED_THUMBS} are previewed")
            else:
                try:
                    thumb = make_thumb(readers[split].read(ref))
                except Exception as exc:  # a source moved away is shown, not fatal
                    thumb = Thumb(None, error=f"no preview: source not readable: {exc}")
            shard, position, kept = (stored or {}).get((synset, name), ("", -1, None))
            out.append(
                Listed(synset, name, str(entry.get("reason", "")), split, thumb, kept, shard, position)
            )
    finally:
        for reader in readers.values():
            reader.close()
    return out
