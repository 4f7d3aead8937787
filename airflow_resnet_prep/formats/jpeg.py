"""What an image file is, from its header alone, and the re-encoding the converters need.

``probe`` runs once per image (1.28 M times for ImageNet), so for JPEGs it reads only the marker
segments up to the first scan, in plain Python on ``bytes`` (a few microseconds), and checks that the
file is complete with one C-speed ``rfind`` for the end-of-image marker. It decides whether the bytes
can be stored unchanged (the decoders that read the outputs, libjpeg-turbo in TensorFlow and nvJPEG in
DALI, take baseline and progressive 8-bit JPEGs in gray or colour) or must be re-encoded as an RGB JPEG.

JPEG decisions (``reencode_reason`` None means pass-through):

- SOF0/SOF1/SOF2, 8-bit, 1 or 3 components, complete, plain header: pass-through.
- 4 components: re-encode, ``"CMYK JPEG"`` or ``"YCCK JPEG"`` (Adobe APP14 transform 2).
- Arithmetic-coded (SOF9-11), lossless (SOF3), hierarchical (SOF5-7, 13-15) 8-bit JPEGs, and headers
  with anything unusual (stray bytes between segments, unknown or standalone markers, two frame headers,
  MPF or short metadata segments that Pillow's parser trips on): decoded fully with Pillow right away;
  re-encoded if that works (reason names the oddity), else ``BadImageError``.
- More pixels than Pillow's ``Image.MAX_IMAGE_PIXELS`` (89 M; ImageNet's largest is far below):
  ``BadImageError``, pass-through or not, so a forged header cannot make a reader allocate gigabytes.
- Precision other than 8 bits (12-bit, 16-bit lossless): ``BadImageError``; Pillow refuses them and the
  MLPerf readers do not take them either.
- Height 0 (the height would come from a DNL marker after the first scan) or width 0, component counts
  other than 1/3/4, bad sampling factors, a frame header of the wrong length, bad quantization tables,
  segments shorter than 2 bytes or running past the end, no end-of-image marker after the scan
  (truncated file): ``BadImageError``.

Every other format (a PNG named ``.JPEG``, GIF, ...) is opened lazily with Pillow for its format and
size and re-encoded (``"PNG image"``, ``"GIF image"``). Whatever the bytes, ``probe`` raises only
:class:`BadImageError`; when it returns, width, height and components agree with what Pillow reads.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from airflow_resnet_prep.errors import BadImageError

# Re-encode reasons that callers (manifest, tests) may match on.
REASON_CMYK = "CMYK JPEG"
REASON_YCCK = "YCCK JPEG"
REASON_PNG = "PNG image"

_TRUNCATED_HEADER = "truncated JPEG: the file ends inside its header, before the image data"
_TRUNCATED_DATA = "truncated JPEG: no end-of-image marker (FF D9) after the image data"

# SOF markers whose images pass through (baseline, extended sequential, progressive; Huffman-coded).
_SOF_PASS = frozenset((0xC0, 0xC1, 0xC2))
# Other frame types: decoded with Pillow and re-encoded if it can.
_SOF_OTHER = {
    0xC3: "lossless JPEG",
    0xC5: "hierarchical JPEG",
    0xC6: "hierarchical JPEG",
    0xC7: "hierarchical JPEG",
    0xC9: "arithmetic-coded JPEG",
    0xCA: "arithmetic-coded JPEG",
    0xCB: "arithmetic-coded lossless JPEG",
    0xCD: "hierarchical arithmetic-coded JPEG",
    0xCE: "hierarchical arithmetic-coded JPEG",
    0xCF: "hierarchical arithmetic-coded JPEG",
}
# Marker segments (with a length) the fast path walks over. Everything else before the scan (standalone
# markers, JPGn, DNL/DHP/EXP, 0xFF00) is unusual enough to ask Pillow instead.
_SEGMENTS = frozenset([0xC4, 0xCC, 0xDA, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0), *_SOF_PASS, *_SOF_OTHER])
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What ``probe`` learned about one image."""

    format: str  # "JPEG", "PNG", or Pillow's format name for anything else
    width: int
    height: int
    components: int  # JPEG: 1 (gray), 3 (YCbCr/RGB), 4 (CMYK/YCCK); other formats: 0
    reencode_reason: str | None  # None: store the bytes unchanged; else why they must be re-encoded


def probe(data: bytes, name: str) -> ImageInfo:
    """Identify ``data`` (the file ``name``) and decide pass-through or re-encode; see the module doc."""
    if data[:3] != b"\xff\xd8\xff":
        return _probe_other(data, name)
    n = len(data)
    i = 2  # at the 0xFF of the next marker
    sof = -1
    width = height = components = 0
    adobe_transform = -1
    while True:
        if i >= n:
            raise BadImageError(name, _TRUNCATED_HEADER)
        if data[i] != 0xFF:
            return _probe_by_decoding(data, name, "JPEG with stray bytes between header segments")
        i += 1
        while i < n and data[i] == 0xFF:  # fill bytes before a marker
            i += 1
        if i >= n:
            raise BadImageError(name, _TRUNCATED_HEADER)
        m = data[i]
        if m not in _SEGMENTS:
            return _probe_by_decoding(data, name, f"JPEG with marker FF{m:02X} before the image data")
        if i + 3 > n:
            raise BadImageError(name, _TRUNCATED_HEADER)
        seg_len = (data[i + 1] << 8) | data[i + 2]
        if seg_len < 2:
            raise BadImageError(
                name, f"corrupt JPEG header: segment FF{m:02X} at byte {i - 1} has length {seg_len} (< 2)"
            )
        p = i + 3  # payload
        end = i + 1 + seg_len
        if end > n:
            raise BadImageError(name, _TRUNCATED_HEADER)

        if m == 0xDA:  # start of scan: the header is complete
            if sof < 0:
                raise BadImageError(name, "corrupt JPEG: image data (SOS) before any frame header (SOF)")
            # Inside entropy-coded data every 0xFF byte is followed by 0x00 or a restart marker, so
            # FF D9 after the scan header is the end-of-image marker: its absence means truncation.
            if data.rfind(b"\xff\xd9", end) < 0:
                raise BadImageError(name, _TRUNCATED_DATA)
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and width * height > limit:
                raise BadImageError(name, _too_many_pixels(width, height, limit))
            if components == 4:
                reason = REASON_YCCK if adobe_transform == 2 else REASON_CMYK
                return ImageInfo("JPEG", width, height, 4, reason)
            return ImageInfo("JPEG", width, height, components, None)
        if m == 0xDB:
            _check_dqt(data, p, end, name)
        elif m >= 0xE0:
            if m == 0xEE:
                if data.startswith(b"Adobe", p):
                    if seg_len < 9:  # Pillow reads a 16-bit version at offset 5
                        return _probe_by_decoding(data, name, "JPEG with a short Adobe segment")
                    if seg_len >= 14:
                        adobe_transform = data[p + 11]
            elif m == 0xE0:
                if seg_len < 9 and data.startswith(b"JFIF", p):
                    return _probe_by_decoding(data, name, "JPEG with a short JFIF segment")
            elif m == 0xE2:
                if seg_len < 16 and data.startswith(b"ICC_PROFILE\0", p):
                    return _probe_by_decoding(data, name, "JPEG with a short ICC profile segment")
                if data.startswith(b"MPF\0", p):
                    return _probe_by_decoding(data, name, "JPEG with a multi-picture (MPF) segment")
            elif m == 0xED and data.startswith(b"Photoshop 3.0\0", p) and not _photoshop_ok(data[p:end]):
                return _probe_by_decoding(data, name, "JPEG with a malformed Photoshop segment")
        elif m in _SOF_PASS or m in _SOF_OTHER:
            if sof >= 0:
                return _probe_by_decoding(data, name, "JPEG with more than one frame header (SOF)")
            sof = m
            width, height, components = _parse_sof(data, m, p, end, name)
            if m not in _SOF_PASS:
                return _probe_by_decoding(data, name, _SOF_OTHER[m])
        i = end


def _parse_sof(data: bytes, marker: int, p: int, end: int, name: str) -> tuple[int, int, int]:
    """Width, height and component count from a frame header, refusing what no reader decodes."""
    if end - p < 6:
        raise BadImageError(name, f"corrupt JPEG header: frame header (SOF) of {end - p} bytes")
    precision = data[p]
    height = (data[p + 1] << 8) | data[p + 2]
    width = (data[p + 3] << 8) | data[p + 4]
    nf = data[p + 5]
    if precision != 8:
        raise BadImageError(
            name, f"{precision}-bit JPEG: only 8-bit samples can be decoded (Pillow refuses others)"
        )
    if nf not in (1, 3, 4):
        raise BadImageError(name, f"JPEG with {nf} components: only 1 (gray), 3 (colour) or 4 (CMYK) decode")
    if height == 0:
        raise BadImageError(
            name, "JPEG with height 0 in its frame header (height set later by a DNL marker): not supported"
        )
    if width == 0:
        raise BadImageError(name, "corrupt JPEG header: width 0 in the frame header")
    if end - p != 6 + 3 * nf:
        raise BadImageError(name, f"corrupt JPEG header: frame header of {end - p} bytes for {nf} components")
    for c in range(p + 7, end, 3):
        hv = data[c]
        if not (1 <= hv >> 4 <= 4 and 1 <= hv & 15 <= 4):
            raise BadImageError(name, f"corrupt JPEG header: sampling factors {hv >> 4}x{hv & 15}")
    return width, height, nf


def _check_dqt(data: bytes, p: int, end: int, name: str) -> None:
    """Quantization tables must tile the segment exactly (libjpeg and Pillow both insist)."""
    while p < end:
        v = data[p]
        p += 65 if v < 16 else 129
        if p > end or v & 15 > 3:
            raise BadImageError(name, "corrupt JPEG header: bad quantization table (DQT) segment")


def _photoshop_ok(s: bytes) -> bool:
    """Whether Pillow's Photoshop APP13 parser gets through ``s``.

    It stops quietly on most truncations but fails the whole open when a resource ends right after its
    2-byte code; mirror that, so ``probe`` never passes a file that Pillow cannot open.
    """
    n = len(s)
    off = 14
    while s[off : off + 4] == b"8BIM":
        off += 4
        if off + 2 > n:
            return True
        code = (s[off] << 8) | s[off + 1]
        off += 2
        if off >= n:
            return False
        off += 1 + s[off]
        off += off & 1
        if off + 4 > n:
            return True
        size = int.from_bytes(s[off : off + 4], "big")
        off += 4
        if code == 0x03ED and len(s[off : off + size]) < 14:
            return True
        off += size
        off += off & 1
    return True


def _too_many_pixels(w: int, h: int, limit: int) -> str:
    return (
        f"{w}x{h} image has more than {limit:,} pixels (Pillow's MAX_IMAGE_PIXELS, its guard against "
        "decompression bombs); refusing it"
    )


def _open(data: bytes, name: str) -> Image.Image:
    """Open lazily (header only) with Pillow; anything it cannot identify is a BadImageError."""
    try:
        return Image.open(io.BytesIO(data))
    except Exception as exc:  # Pillow raises many types for garbage (SyntaxError, struct.error, ...)
        raise BadImageError(name, f"not an image Pillow can open ({type(exc).__name__}: {exc})") from None


def _decode(data: bytes, name: str) -> Image.Image:
    """Decode every pixel, so truncated or corrupt data fails here, naming the file."""
    if not data:
        raise BadImageError(name, "empty file (0 bytes)")
    if data[:3] == b"\xff\xd8\xff" and data.rfind(b"\xff\xd9") < 0:
        # Pillow would pad a truncated JPEG with gray if LOAD_TRUNCATED_IMAGES were set somewhere.
        raise BadImageError(name, _TRUNCATED_DATA)
    img = _open(data, name)
    limit = Image.MAX_IMAGE_PIXELS
    w, h = img.size
    if limit is not None and w * h > limit:
        raise BadImageError(name, _too_many_pixels(w, h, limit))
    try:
        img.load()
    except Exception as exc:
        raise BadImageError(
            name, f"cannot decode the {img.format} image ({type(exc).__name__}: {exc})"
        ) from None
    return img


def _probe_by_decoding(data: bytes, name: str, what: str) -> ImageInfo:
    """An unusual JPEG: re-encode it if Pillow decodes it completely, else it is a bad image."""
    try:
        img = _decode(data, name)
    except BadImageError as exc:
        raise BadImageError(name, f"{what}: {exc.reason}") from None
    w, h = img.size
    return ImageInfo(img.format or "JPEG", w, h, len(img.getbands()), what)


def _probe_other(data: bytes, name: str) -> ImageInfo:
    if not data:
        raise BadImageError(name, "empty file (0 bytes)")
    # PNG included: Pillow reads its size from IHDR (checking the chunk's CRC) without decoding pixels.
    with _open(data, name) as img:
        fmt = img.format or "unknown"
        w, h = img.size
    if data.startswith(_PNG_SIGNATURE) and fmt == "PNG":
        return ImageInfo("PNG", w, h, 0, REASON_PNG)
    return ImageInfo(fmt, w, h, 0, f"{fmt} image")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Three 8-bit colour channels, as the readers expect.

    CMYK: Pillow reads Adobe (Photoshop) CMYK JPEGs with inverted samples ("CMYK;I") and converts with
    R = (255 - C) * (255 - K) / 255, which gives the intended colours. Alpha is dropped, as TensorFlow's
    ``decode_png(channels=3)`` and OpenCV's ``imread(IMREAD_COLOR)`` drop it. 16-bit gray is scaled to
    8 bits (not clipped). EXIF orientation and ICC profiles are not applied: pass-through images keep
    them unapplied too, so all images are treated alike.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _encode(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def to_rgb_jpeg(data: bytes, name: str, quality: int = 100) -> tuple[bytes, int, int]:
    """Decode any image Pillow reads and re-encode it as an RGB JPEG; return (bytes, width, height).

    Quality 100 and 4:2:0 chroma subsampling, as ``imagenet_to_gcs.py`` re-encodes with
    ``tf.image.encode_jpeg(format='rgb', quality=100)``.
    """
    img = _to_rgb(_decode(data, name))
    return _encode(img, quality), img.width, img.height


def resize_short_side(data: bytes, name: str, short_side: int, quality: int) -> tuple[bytes, int, int]:
    """Resize so the short side is ``short_side`` and re-encode at ``quality``, as ``im2rec.py --resize``.

    Sizes follow im2rec exactly: the long side becomes ``long * short_side // short`` (floor), square
    images become ``short_side`` square, and small images are scaled up too. Filter: Pillow's bilinear
    (im2rec calls ``cv2.resize`` with its default, bilinear); Pillow's widens the filter when shrinking
    (anti-aliasing) where OpenCV's does not, so pixels differ slightly, sizes never.
    """
    if short_side < 1:
        raise ValueError(f"resize_short_side: short_side must be >= 1 pixel, got {short_side}")
    img = _to_rgb(_decode(data, name))
    w, h = img.size
    if h > w:
        size = (short_side, h * short_side // w)
    else:
        size = (w * short_side // h, short_side)
    if size != img.size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return _encode(img, quality), size[0], size[1]
