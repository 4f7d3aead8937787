"""The package's own error types. Every message names the file and the problem."""

from __future__ import annotations


class PrepError(Exception):
    """Base class: a problem with the input or the output that a user can act on."""


class SourceError(PrepError):
    """A source (download, archive, folder) is missing, corrupt or does not match its checksum."""


class UnsafeArchiveError(SourceError):
    """An archive member would land outside its target or is not a regular file."""


class LabelsError(PrepError):
    """The validation labels file does not fit the validation images or the training classes."""


class BadImageError(PrepError):
    """An image that no decoder can open, a truncated JPEG or an empty file."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason

    def __reduce__(self) -> tuple[type[BadImageError], tuple[str, str]]:
        # Pickled as cls(*args) by default, and args is the one message: rebuild from (name, reason) so
        # the error survives the trip from a worker process back to the parent.
        return type(self), (self.name, self.reason)


class OutputConflictError(PrepError):
    """The output folder holds files from a different plan or another run is writing it."""


class DiskFullError(PrepError):
    """The output file system ran out of space."""


def reason(exc: BaseException) -> str:
    """The short reason of an OS or storage error, for a message that names the file itself."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
