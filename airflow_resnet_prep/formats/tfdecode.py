"""Decoding an image as the trainer does: ``tf.io.decode_jpeg(data, channels=3)`` (docs/formats.md, Checks).

The conversion copies JPEG bytes without decoding them (the header probe, :func:`.jpeg.probe`, checks
structure and completeness only). An image whose header parses but whose entropy-coded data the
decoder rejects (a corrupt Huffman table, a second frame header inside the scan) would reach the
output and fail hours into training. This module runs the reference trainer's decoder on it first:
``imagenet_preprocessing.py`` of the MLPerf reference ResNet decodes with ``tf.image.decode_jpeg`` /
``decode_and_crop_jpeg`` into 3 channels, both libjpeg-turbo through the same ``DecodeJpeg`` kernel.

TensorFlow is an optional extra (``pip install 'airflow-resnet-prep[tensorflow]'``) and costs about
1.5 s and hundreds of MB to import, so it is imported here, lazily, only when a check is asked for.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from typing import Any

from airflow_resnet_prep.errors import BadImageError, PrepError

TF_EXTRA = "pip install 'airflow-resnet-prep[tensorflow]'"
# TensorFlow's message for every libjpeg failure is the same; libjpeg's own reason goes to stderr.
_GENERIC = "Invalid JPEG data or crop window"
_stderr_lock = threading.Lock()


class DecoderUnavailableError(PrepError):
    """The decode check was asked for but TensorFlow cannot be imported."""


def load_tensorflow() -> Any:
    """``tensorflow``, imported now (quietly), or a clear error naming the extra that installs it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # no oneDNN/CPU-feature banners per process
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise DecoderUnavailableError(
            f"the decode check (decode_check / verify --decode) decodes images with TensorFlow, which "
            f"cannot be imported here ({exc}); install it with: {TF_EXTRA}"
        ) from None
    return tf


class JpegDecoder:
    """Decodes with TensorFlow's JPEG decoder; :meth:`check` raises :class:`BadImageError` on failure."""

    def __init__(self) -> None:
        self.tf = load_tensorflow()
        self._decode = self.tf.io.decode_jpeg
        self._errors = (self.tf.errors.InvalidArgumentError, self.tf.errors.OpError)

    def check(self, data: bytes, where: str) -> tuple[int, int]:
        """Decode ``data`` (the image ``where``) into RGB; its (height, width), or BadImageError naming
        the image and libjpeg's reason."""
        try:
            shape = self._decode(data, channels=3).shape
        except self._errors as exc:
            raise BadImageError(where, self._reason(data, exc)) from None
        return int(shape[0]), int(shape[1])

    def _reason(self, data: bytes, exc: Exception) -> str:
        """Why TensorFlow refused the image. Its own message is one generic line for every libjpeg
        error, so on this (rare) path decode once more with stderr captured, where libjpeg prints the
        real reason ("Bogus Huffman table definition", "two SOF markers")."""
        message = str(getattr(exc, "message", exc)).strip().splitlines()[-1]
        message = message.split("}}")[-1].split("[Op:")[0].strip() or _GENERIC
        detail = [line for line in _captured_stderr(lambda: self._decode(data, channels=3)) if line]
        said = "; ".join(dict.fromkeys(detail))  # libjpeg may repeat a warning; keep each line once
        return f"TensorFlow cannot decode it (tf.io.decode_jpeg: {message}{f': {said}' if said else ''})"


def _captured_stderr(fn: Any) -> list[str]:
    """Run ``fn`` (errors ignored) with file descriptor 2 sent to a temporary file; the lines written,
    without TensorFlow's own log lines (``W0000 ...``)."""
    with _stderr_lock, tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            with contextlib.suppress(Exception):
                fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read(64 << 10).decode("utf-8", "replace")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or (line[:1] in "WIEF" and line[1:5].isdigit()):  # glog: W0000 00:00:... file.cc:N]
            continue
        out.append(line)
    return out
