"""An auth manager for the access tests: Airflow's simple auth manager, except that a user listed in
``RESNET_PREP_TEST_DAG_SCOPES`` (``alice:dag_a;bob:dag_b``) sees and acts on those DAGs only, as a
deployment with per-DAG permissions (the FAB auth manager's DAG-level roles) would have it."""

from __future__ import annotations

import os

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager


def _scopes() -> dict[str, set[str]]:
    scopes: dict[str, set[str]] = {}
    for item in os.environ.get("RESNET_PREP_TEST_DAG_SCOPES", "").split(";"):
        user, _, dags = item.partition(":")
        if user.strip():
            scopes[user.strip()] = {d.strip() for d in dags.split(",") if d.strip()}
    return scopes


class ScopedAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        scope = _scopes().get(user.username)
        if scope is not None and (details is None or details.id not in scope):
            return False
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )
