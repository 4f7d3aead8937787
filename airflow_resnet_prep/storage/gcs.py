"""Google Cloud Storage behind the storage seam (extra ``[gcs]``: gcsfs).

With the Airflow Google provider installed, the client is the one Airflow's object storage builds
for the ``google_cloud_platform`` connection. Without it (the provider pulls in about 1 GB), the
client is built here from the same connection: its extra's ``keyfile_dict`` (service-account JSON),
``key_path`` or nothing (the machine's default credentials), plus ``project`` and, for an emulator,
``endpoint_url``; it is attached to Airflow's object storage so ``ObjectStoragePath`` sees it too.

Leases use GCS preconditions on the object's generation (``ifGenerationMatch``: 0 to create only if
absent, the holder's generation to renew or take over). Not here yet: the ``compose`` join (the GCS
analogue of S3's multipart upload: at most 32 sources per call).
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import quote

from airflow_resnet_prep.storage.base import ObjectNotFoundError, StorageError
from airflow_resnet_prep.storage.objectstore import ObjectStore


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
