"""Google Cloud Storage behind the storage seam (extra ``[gcs]``: gcsfs).

With the Airflow Google provider installed, the client is the one Airflow's object storage builds
for the ``google_cloud_platform`` connection. Without it (the provider pulls in about 1 GB), the
client is built here from the same connection: its extra's ``keyfile_dict`` (service-account JSON),
``key_path`` or nothing (the machine's default credentials), plus ``project`` and, for an emulator,
``endpoint_url``; it is attached to Airflow's object storage so ``ObjectStoragePath`` sees it too.

Not yet here: leases (GCS preconditions ``ifGenerationMatch=0``) and the ``compose`` join; the
generic reads and writes of :class:`~.objectstore.ObjectStore` work.
"""

from __future__ import annotations

import json
import os
from typing import Any

from airflow_resnet_prep.storage.base import StorageError
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
        alias = f"airflow-resnet-prep:gs:{self.conn_id or ''}:{os.getpid()}"
        fs = gcsfs.GCSFileSystem(skip_instance_cache=True, **gcs_options(self.conn_id))
        return attach("gs", self.conn_id, alias=alias, fs=fs).fs
