"""Checksums of source archives: parse ``md5:<hex>`` / ``sha256:<hex>``, hash big files, remember results.

Hashing the 140 GB training tar takes minutes, so a verified digest is remembered in
``<cache_dir>/verified.json`` keyed by the file's absolute path, size and ``mtime_ns``: a rerun on an
unchanged file does not hash it again, and any change to the file (new size or new mtime) hashes anew.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from airflow_resnet_prep.errors import SourceError, reason
from airflow_resnet_prep.fsutil import atomic_write_json, exclusive_lock, read_json
from airflow_resnet_prep.progress import Progress, format_duration
from airflow_resnet_prep.storage import StorageError, Store

if TYPE_CHECKING:
    from airflow_resnet_prep.storage import ObjectVersion

COPY_CHUNK = 16 << 20  # bytes per ranged GET when copying or hashing a whole object
COPY_CONCURRENCY = 4

log = logging.getLogger(__name__)

#: Accepted algorithms and the length of their hex digest.
ALGORITHMS: dict[str, int] = {"md5": 32, "sha256": 64}
ACCEPTED_FORMS = "'md5:<32 hex digits>' or 'sha256:<64 hex digits>'"
CACHE_FILE = "verified.json"
#: Files smaller than this are hashed without progress lines.
PROGRESS_MIN_BYTES = 256 * 1024 * 1024
_BUF_BYTES = 8 * 1024 * 1024
_SPEC_RE = re.compile(r"^([a-z0-9]+):([0-9a-f]+)$", re.IGNORECASE)


class ByteProgress(Progress):
    """:class:`Progress` for byte counts: MB, MB/s and ETA, counting from ``offset`` (a resumed transfer)."""

    def __init__(self, label: str, total: int, offset: int = 0, interval: float = 5.0) -> None:
        super().__init__(label, total, unit="bytes", interval=interval, logger=log)
        self.offset = offset

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed  # this session's bytes only: a resumed offset is not throughput
        have = self.offset + self.done
        if self.total:
            eta = format_duration((self.total - have) / rate) if rate > 0 else "?"
            of = f"/{self.total / 1e6:,.1f} MB ({100.0 * have / self.total:.1f}%)"
        else:
            eta, of = "?", " MB"
        return (
            f"{self.label}: {have / 1e6:,.1f}{of}, {rate / 1e6:,.1f} MB/s, "
            f"elapsed {format_duration(elapsed)}, ETA {eta}"
        )


def parse_checksum(spec: str | None) -> tuple[str, str] | None:
    """``"md5:<hex>"`` / ``"sha256:<hex>"`` -> ``(algo, lowercase hex)``; ``None`` or blank -> ``None``."""
    if spec is None or not spec.strip():
        return None
    m = _SPEC_RE.match(spec.strip())
    if not m or m.group(1).lower() not in ALGORITHMS or len(m.group(2)) != ALGORITHMS[m.group(1).lower()]:
        raise SourceError(f"checksum {spec!r} not understood: expected {ACCEPTED_FORMS} (or empty for none)")
    return m.group(1).lower(), m.group(2).lower()


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of ``path``, read in large blocks; logs progress for big files."""
    h = hashlib.new(algo)
    size = os.stat(path).st_size
    progress = ByteProgress(f"{algo} of {Path(path).name}", size) if size >= PROGRESS_MIN_BYTES else None
    buf = bytearray(_BUF_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            if progress:
                progress.advance(n)
    if progress:
        progress.finish()
    return h.hexdigest()


def _cache_key(path: Path) -> str:
    return str(Path(path).absolute())


def _load_cache(cache_file: Path) -> dict[str, dict]:
    data = read_json(cache_file)  # a damaged cache only costs a rehash
    return data if isinstance(data, dict) else {}


def _same_file(entry: object, st: os.stat_result) -> bool:
    """Whether a cache entry describes the file as it is now (same size and modification time)."""
    if not isinstance(entry, dict):
        return False
    return entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns


def _cached_digest(cache_dir: Path, path: Path, st: os.stat_result, algo: str) -> str | None:
    entry = _load_cache(cache_dir / CACHE_FILE).get(_cache_key(path))
    if _same_file(entry, st):
        digest = (entry.get("digests") or {}).get(algo)
        return digest if isinstance(digest, str) else None
    return None


def remember_digest(cache_dir: Path, path: Path, st: os.stat_result, algo: str, digest: str) -> None:
    """Record that ``path`` (as it was when ``st`` was taken) has this digest; failures only log a warning."""
    cache_file = cache_dir / CACHE_FILE
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Fetch tasks for train and val may verify at the same time: serialise the read-modify-write.
        with exclusive_lock(cache_dir / f".{CACHE_FILE}.lock", wait_s=60.0):
            cache = _load_cache(cache_file)
            key = _cache_key(path)
            entry = cache.get(key)
            if not _same_file(entry, st):
                entry = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digests": {}}
            entry.setdefault("digests", {})[algo] = digest
            cache[key] = entry
            # Forget files that are gone, so the cache does not grow without bound (objects in a bucket,
            # keyed by URI, are kept: checking them would cost a request each).
            cache = {k: v for k, v in cache.items() if "://" in k or os.path.exists(k)}
            atomic_write_json(cache_file, cache)
    except OSError as exc:
        log.warning("%s: could not record a checksum (%s); the next run hashes again", cache_file, exc)


def verify_file(path: Path, spec: str | None, cache_dir: Path | None = None) -> str | None:
    """Check ``path`` against ``spec``; return the verified ``"algo:hex"`` (``None`` when ``spec`` is empty).

    Raises :class:`SourceError` naming the file, the expected and the actual digest on a mismatch. With
    ``cache_dir``, a digest already computed for this very file (same path, size and mtime) is reused.
    """
    parsed = parse_checksum(spec)
    if parsed is None:
        return None
    algo, expected = parsed
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file to verify against {algo}:{expected}") from None
    actual = _cached_digest(cache_dir, path, st, algo) if cache_dir is not None else None
    if actual is not None:
        log.info("%s: %s known from %s (file unchanged), not hashing again", path, algo, CACHE_FILE)
    else:
        log.info("%s: computing %s of %.1f MB", path, algo, st.st_size / 1e6)
        actual = file_digest(path, algo)
        if cache_dir is not None and os.stat(path).st_mtime_ns == st.st_mtime_ns:
            remember_digest(cache_dir, path, st, algo, actual)
    if actual != expected:
        raise SourceError(f"{path}: {algo} mismatch: expected {expected}, got {actual}")
    return f"{algo}:{actual}"


def stream_object(store: Store, size: int) -> Iterator[bytes]:
    """The whole object of ``store``, in order, read with large concurrent ranged requests."""
    ranges = [(o, min(COPY_CHUNK, size - o)) for o in range(0, size, COPY_CHUNK)]
    try:
        yield from store.iter_ranges(
            "",
            ranges,
            max_gap=0,
            max_request=COPY_CHUNK,
            concurrency=COPY_CONCURRENCY,
            window_bytes=4 * COPY_CHUNK,
        )
    except (StorageError, OSError) as exc:
        raise SourceError(f"{store.url}: reading the object failed: {reason(exc)}") from exc


def object_digest(store: Store, size: int, algo: str) -> str:
    """Hex digest of the whole object, streamed (never written to disk)."""
    h = hashlib.new(algo)
    progress = ByteProgress(f"{algo} of {store.url}", size)
    for data in stream_object(store, size):
        h.update(data)
        progress.advance(len(data))
    progress.finish()
    return h.hexdigest()


def _same_object(entry: object, info: ObjectVersion) -> bool:
    if not isinstance(entry, dict):
        return False
    return (entry.get("size"), entry.get("etag"), entry.get("version")) == (
        info.size,
        info.etag,
        info.version,
    )


def verify_object(
    store: Store, shown: str, info: ObjectVersion, spec: str | None, cache_dir: Path | None = None
) -> str | None:
    """:func:`verify_file` for an object in a bucket: its bytes are streamed with large concurrent ranged
    reads and hashed, never written to disk. The result is remembered in ``verified.json`` keyed by the
    URI (without connection) with the object's size and ETag/generation, so a rerun does not read the
    object again while it is unchanged. ``info`` is its :class:`~airflow_resnet_prep.storage.ObjectVersion`.
    """
    parsed = parse_checksum(spec)
    if parsed is None:
        return None
    algo, expected = parsed
    actual = None
    if cache_dir is not None:
        entry = _load_cache(cache_dir / CACHE_FILE).get(shown)
        if _same_object(entry, info) and isinstance((entry.get("digests") or {}).get(algo), str):
            actual = entry["digests"][algo]
            log.info("%s: %s known from %s (object unchanged), not reading it again", shown, algo, CACHE_FILE)
    if actual is None:
        log.info("%s: computing %s of %.1f MB, streamed from the bucket", shown, algo, info.size / 1e6)
        actual = object_digest(store, info.size, algo)
        if cache_dir is not None:
            _remember_object(cache_dir, shown, info, algo, actual)
    if actual != expected:
        raise SourceError(f"{shown}: {algo} mismatch: expected {expected}, got {actual}")
    return f"{algo}:{actual}"


def _remember_object(cache_dir: Path, shown: str, info: ObjectVersion, algo: str, digest: str) -> None:
    cache_file = cache_dir / CACHE_FILE
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(cache_dir / f".{CACHE_FILE}.lock", wait_s=60.0):
            cache = _load_cache(cache_file)
            entry = cache.get(shown)
            if not _same_object(entry, info):
                entry = {"size": info.size, "etag": info.etag, "version": info.version, "digests": {}}
            entry.setdefault("digests", {})[algo] = digest
            cache[shown] = entry
            atomic_write_json(cache_file, cache)
    except OSError as exc:
        log.warning(
            "%s: could not record a checksum (%s); the next run reads the object again", cache_file, exc
        )
