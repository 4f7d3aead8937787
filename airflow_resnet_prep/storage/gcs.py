"""Google Cloud Storage behind the storage seam (extra ``[gcs]``: gcsfs).

With the Airflow Google provider installed, the client is the one Airflow's object storage builds
for the ``google_cloud_platform`` connection. Without it (the provider pulls in about 1 GB), the
client is built here from the same connection: its extra's ``keyfile_dict`` (service-account JSON),
``key_path`` or nothing (the machine's default credentials), plus ``project`` and, for an emulator,
``endpoint_url``; it is attached to Airflow's object storage so ``ObjectStoragePath`` sees it too.

Leases use GCS preconditions on the object's generation (``ifGenerationMatch``: 0 to create only if
absent, the holder's generation to renew or take over).

Assemblies (the GCS analogue of S3's multipart upload) keep their pieces as objects
``{scratch}/{token}/{number:05d}`` and join them with ``compose``, at most 32 sources per call: a tree
of intermediate objects (``{scratch}/{token}/compose/{level}/...``) when there are more pieces, the last
call writing the final key, which appears whole.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from airflow_resnet_prep.storage.base import (
    CONCURRENCY,
    Assembly,
    ObjectNotFoundError,
    Part,
    PieceSink,
    StorageError,
    assembly_token,
    check_key,
    join_key,
    key_tag,
)
from airflow_resnet_prep.storage.objectstore import WRITER_PART, ObjectStore

COMPOSE_MAX = 32  # sources per compose request (GCS's limit)


def gcs_options(conn_id: str | None) -> dict[str, Any]:
    """gcsfs options from a ``google_cloud_platform`` connection (no secret is logged or returned in errors)."""
    if not conn_id:
        return {}
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    extra = conn.extra_dejson or {}

    def get(name: str) -> Any:  # older connections prefix their extras
        return extra.get(name) or extra.get(f"extra__google_cloud_platform__{name}")

    options: dict[str, Any] = {}
    keyfile = get("keyfile_dict")
    if keyfile:
        options["token"] = json.loads(keyfile) if isinstance(keyfile, str) else keyfile
    elif get("key_path"):
        options["token"] = get("key_path")
    if get("project"):
        options["project"] = get("project")
    if get("endpoint_url"):
        options["endpoint_url"] = get("endpoint_url")
        options.setdefault("token", "anon")
    return options


class GcsStore(ObjectStore):
    def _make_fs(self) -> Any:
        from airflow.sdk.io import attach, has_fs

        if has_fs("gs"):
            return super()._make_fs()
        try:
            import gcsfs
        except ImportError:
            raise StorageError(
                f"{self.url}: gs:// needs gcsfs: pip install 'airflow-resnet-prep[gcs]'"
            ) from None
        self._require_connection()
        alias = f"airflow-resnet-prep:gs:{self.conn_id or ''}:{os.getpid()}"
        fs = gcsfs.GCSFileSystem(skip_instance_cache=True, **gcs_options(self.conn_id))
        return attach("gs", self.conn_id, alias=alias, fs=fs).fs

    # -- conditional writes (leases) -----------------------------------------------------------------------------
    def _conditional_put(self, key: str, body: bytes, if_version: str | None) -> str | None:
        # A multipart upload (metadata + data in one request), the form whose preconditions both GCS and
        # fake-gcs-server honour.
        meta = json.dumps({"name": self._key(key)})
        payload = (
            b"--==0==\nContent-Type: application/json; charset=UTF-8\n\n"
            + meta.encode()
            + b"\n--==0==\nContent-Type: application/octet-stream\n\n"
            + body
            + b"\n--==0==--"
        )
        self._count("PutObject", written=len(body))
        try:
            out = self.fs.call(
                "POST",
                f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket)}/o",
                uploadType="multipart",
                headers={"Content-Type": 'multipart/related; boundary="==0=="'},
                data=payload,
                json_out=True,
                ifGenerationMatch=if_version or "0",
            )
        except FileExistsError:  # gcsfs's translation of 412 Precondition Failed
            return None
        except OSError as exc:
            if getattr(exc, "code", None) == 412 or "412" in str(exc):
                return None
            raise StorageError(f"{self.uri(key)}: conditional write failed: {exc}") from exc
        self.fs.invalidate_cache(self._path(key))
        return str(out["generation"])

    def _versioned_read(self, key: str) -> tuple[bytes, str] | None:
        try:
            self.fs.invalidate_cache(self._path(key))
            self._count("HeadObject")
            info = self.fs.info(self._path(key))
            data = self.read_range(key, 0, int(info["size"])) if int(info["size"]) else b""
        except (FileNotFoundError, ObjectNotFoundError):
            return None
        return data, str(info["generation"])

    def _conditional_delete(self, key: str, version: str) -> None:
        self._count("DeleteObject")
        try:
            self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self._key(key), ifGenerationMatch=version)
        except OSError as exc:
            # Gone already, or 412: no longer the version we hold; either way nothing of ours to delete.
            gone = isinstance(exc, (FileNotFoundError, FileExistsError))
            if not (gone or getattr(exc, "code", None) == 412 or "412" in str(exc)):
                raise StorageError(f"{self.uri(key)}: cannot delete: {exc}") from exc
        self.fs.invalidate_cache(self._path(key))

    # -- assemblies ---------------------------------------------------------------------------------------------
    def begin_assembly(self, key: str, scratch: str) -> GcsAssembly:
        # Nothing to create: the pieces are the assembly (a token without pieces holds nothing).
        return GcsAssembly(self, key, scratch, assembly_token(key))

    def resume_assembly(self, key: str, scratch: str, token: str) -> GcsAssembly:
        return GcsAssembly(self, key, scratch, token)

    def abort_assemblies(self, key: str, scratch: str, keep: Sequence[str] = ()) -> int:
        scratch = check_key(scratch)
        tag = key_tag(key) + "-"
        base = scratch + "/" if scratch else ""
        tokens: dict[str, list[str]] = {}
        for info in self.list(scratch):
            token = info.key[len(base) :].split("/", 1)[0]
            if token.startswith(tag) and token not in keep:
                tokens.setdefault(token, []).append(info.key)
        for objects in tokens.values():
            self.delete_many(objects)
        return len(tokens)

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` (absent ones are no error): gcsfs sends batches of 100 to GCS, single requests
        (5 in flight) to an emulator."""
        if not keys:
            return
        batched = bool(getattr(self.fs, "on_google", False))
        for _ in range(math.ceil(len(keys) / 100) if batched else len(keys)):
            self._count("DeleteObjects" if batched else "DeleteObject")
        try:
            self.fs.rm([self._path(k) for k in keys])
        except FileNotFoundError:
            return  # absent already: what a delete wants
        except OSError as exc:
            raise StorageError(
                f"{self.uri(keys[0])} (and {len(keys) - 1} more): cannot delete: {exc}"
            ) from exc

    def compose(self, key: str, sources: Sequence[str]) -> int:
        """Write ``key`` as the concatenation of the objects ``sources`` (at most 32) in one request;
        return its size."""
        if not 1 <= len(sources) <= COMPOSE_MAX:
            raise ValueError(f"{self.uri(key)}: compose takes 1..{COMPOSE_MAX} sources, not {len(sources)}")
        self._count("ComposeObject")
        name = self._key(key)
        try:
            out = self.fs.call(
                "POST",
                "b/{}/o/{}/compose",
                self.bucket,
                name,
                headers={"Content-Type": "application/json"},
                json={
                    "kind": "storage#composeRequest",
                    "sourceObjects": [{"name": self._key(s)} for s in sources],
                    "destination": {
                        "name": name,
                        "bucket": self.bucket,
                        "contentType": "application/octet-stream",
                    },
                },
                json_out=True,
            )
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{self.uri(key)}: a source of the compose is gone") from None
        except OSError as exc:
            raise StorageError(f"{self.uri(key)}: compose failed: {exc}") from exc
        self.fs.invalidate_cache(self._path(key))
        return int(out["size"])


class GcsAssembly(Assembly):
    """Pieces are objects ``{scratch}/{token}/{number:05d}`` written with :meth:`GcsStore.writer`;
    :meth:`complete` lists them (one request per 1,000), composes them 32 at a time into intermediate
    objects, level by level (several calls in flight), the last call writing ``key``, then deletes
    pieces and intermediates."""

    store: GcsStore

    @property
    def folder(self) -> str:
        return join_key(self.scratch, self.token)

    @contextlib.contextmanager
    def piece_writer(self, number: int) -> Iterator[PieceSink]:
        self.check_number(number)
        with self.store.writer(self.piece_key(number)) as fh:
            sink = PieceSink(number, fh, self.where)
            yield sink
        # gcsfs: one upload up to a writer part, else a resumable upload (start + one per part)
        size = sink.size
        requests = 1 if size <= WRITER_PART else 1 + math.ceil(size / WRITER_PART)
        for n in range(requests):
            self.store._count("PutObject", written=size if n == 0 else 0)
        sink._part = Part(number, "", size)

    def complete(self, parts: Sequence[Part]) -> None:
        parts = self.check_parts(parts)
        base = self.folder + "/"
        found: dict[int, int] = {}
        for info in self.store.list(self.folder):
            name = info.key[len(base) :]
            if name.isdigit():
                found[int(name)] = info.size
        self.check_sizes(parts, found)
        total = sum(p.size for p in parts)
        sources = [self.piece_key(p.number) for p in parts]
        level = 0
        with ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="gcs-compose") as pool:
            while len(sources) > COMPOSE_MAX:
                level += 1
                groups = [sources[i : i + COMPOSE_MAX] for i in range(0, len(sources), COMPOSE_MAX)]
                targets = [
                    join_key(self.folder, "compose", str(level), f"{i:05d}") for i in range(len(groups))
                ]
                for future in [
                    pool.submit(self.store.compose, t, g) for t, g in zip(targets, groups, strict=True)
                ]:
                    future.result()
                sources = targets
        size = self.store.compose(self.key, sources)
        if size != total:  # the sources were checked just before: only a concurrent writer gets here
            self.store.delete(self.key)
            raise StorageError(f"{self.where}: composed {size} bytes, the pieces add up to {total}")
        self.abort()

    def abort(self) -> None:
        self.store.delete_many([info.key for info in self.store.list(self.folder)])
