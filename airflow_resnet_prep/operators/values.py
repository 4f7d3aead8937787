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


def as_text(value: Any) -> str | None:
    """A string argument: stripped, None when empty or not given (a template rendered to a native object
    may turn ``22.04`` into a number: it is a string again here)."""
    if value is None:
        return None
    return str(value).strip() or None
