"""Small JPEG thumbnails as base64 ``data:`` URIs, so the page needs no file but itself.

Image bytes come from archives and written outputs, i.e. untrusted: any decoder failure becomes a
message, never an exception that stops the report.
"""

from __future__ import annotations

import base64
import io
import re
import warnings
from dataclasses import dataclass

THUMB_SIZE = 160  # longest side, in pixels (shown at up to 160 CSS px)
THUMB_QUALITY = 80
# Refuse to decode anything larger: a thumbnail is not worth a decompression bomb.
MAX_PIXELS = 40_000_000
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


@dataclass(frozen=True)
class Thumb:
    """A decoded image: its data URI (``None`` when it could not be decoded) and what we know of it."""

    uri: str | None
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    error: str = ""


def make_thumb(data: bytes) -> Thumb:
    """Decode ``data`` with Pillow and return a thumbnail of at most :data:`THUMB_SIZE` pixels."""
    from PIL import Image, UnidentifiedImageError  # here: importing the report stays cheap

    if not data:
        return Thumb(None, error="no preview: empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height, mode, fmt = img.width, img.height, img.mode, img.format or ""
                if width * height > MAX_PIXELS:
                    return Thumb(None, width, height, mode, fmt, f"no preview: {width}x{height} is too large")
                # JPEG draft mode decodes at 1/2..1/8 scale directly: much faster for a thumbnail.
                img.draft("RGB", (THUMB_SIZE * 2, THUMB_SIZE * 2))
                rgb = img.convert("RGB")
                rgb.thumbnail((THUMB_SIZE, THUMB_SIZE))
                out = io.BytesIO()
                rgb.save(out, format="JPEG", quality=THUMB_QUALITY)
    except UnidentifiedImageError:
        return Thumb(None, error="no preview: not an image format Pillow can read")
    except Exception as exc:  # hostile bytes: any decoder error is a message
        # Without object addresses ("<... at 0x7f...>"), so the same output always gives the same page.
        message = _ADDRESS.sub("<data>", str(exc))
        return Thumb(None, error=f"no preview: {type(exc).__name__}: {message}"[:300])
    uri = "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")
    return Thumb(uri, width, height, mode, fmt)
