"""Turning rendered template values (which may arrive as strings) into typed arguments."""

from __future__ import annotations

from typing import Any


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off", "", "none"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def as_int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
