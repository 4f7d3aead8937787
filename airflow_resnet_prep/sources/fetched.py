"""What resolving a source gives every kind of source (a download, a local path, an object in a bucket)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Fetched:
    """A source ready to read, and what identifies it for output caching.

    ``fingerprint`` keys: ``kind`` (``url`` | ``file`` | ``dir``) and ``source`` (the URL without
    credentials, or the absolute path), then

    * ``url``: ``size``, ``etag``, ``last_modified`` (``None`` when the server sent none);
    * ``file``: ``size``, ``mtime_ns``;
    * ``dir``: ``files`` (regular files below it, symlinks followed), ``size`` (their total bytes) and
      ``mtime_ns`` (the newest mtime among those files *and the folders*, so renaming or moving a file
      between folders, which changes no file's mtime, still changes the fingerprint);

    * ``object`` (a source in a bucket, :mod:`.bucket`): ``size``, ``etag``, ``version``;
    * ``object_dir`` (a folder prefix in a bucket): ``files``, ``size``, ``digest`` (of every key, size, ETag);

    plus ``checksum`` (``"md5:<hex>"``) when a checksum was given and verified by this call.

    ``path`` is a local path, or for a bucket source read in place its canonical URI
    (``s3://<conn_id>@bucket/key``, see :func:`.bucket.canonical_uri`).
    """

    path: Path | str
    fingerprint: dict[str, object]
