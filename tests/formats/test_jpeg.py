"""Image probing (header only) and re-encoding: decisions, errors, colours, sizes, and a fuzz test."""

from __future__ import annotations

import io
import warnings
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from airflow_resnet_prep.errors import BadImageError
from airflow_resnet_prep.formats.jpeg import (
    REASON_CMYK,
    REASON_PNG,
    REASON_YCCK,
    ImageInfo,
    probe,
    resize_short_side,
    to_rgb_jpeg,
)

# --- building test images ---------------------------------------------------------------------------


def colourful(w: int = 64, h: int = 48) -> Image.Image:
    """A smooth image with every hue in it, so wrong colour conversions show."""
    r = Image.linear_gradient("L").resize((w, h))
    g = r.transpose(Image.Transpose.ROTATE_90).resize((w, h))
    b = Image.radial_gradient("L").resize((w, h))
    return Image.merge("RGB", (r, g, b))


def encode(img: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def after_soi(data: bytes, seg: bytes) -> bytes:
    return data[:2] + seg + data[2:]


def sof_offset(data: bytes) -> int:
    """Offset of the frame header's payload (precision byte) in a Pillow-written JPEG."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        k = data.find(marker)
        if k >= 0:
            return k + 4
    raise AssertionError("no SOF")


def patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def pillow_view(data: bytes) -> tuple[str, tuple[int, int], int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(data)) as im:
            return im.format, im.size, len(im.getbands())


def assert_agrees_with_pillow(data: bytes, info: ImageInfo) -> None:
    fmt, size, bands = pillow_view(data)
    assert (info.width, info.height) == size
    if fmt in ("JPEG", "MPO"):
        assert info.components == bands
    else:
        assert (info.format, info.components) == (fmt, 0)


BASELINE = encode(colourful(), quality=90)
GRAY = encode(colourful().convert("L"), quality=90)
PROGRESSIVE = encode(colourful(), quality=90, progressive=True)
CMYK = encode(colourful().convert("CMYK"), quality=95)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
EXIF = Image.Exif()
EXIF[0x010F] = "Camera maker"
EXIF[0x0112] = 6
RICH = encode(colourful(), quality=90, exif=EXIF, icc_profile=SRGB, comment=b"hello", restart_marker_blocks=1)
PHOTOSHOP = after_soi(
    BASELINE, segment(0xED, b"Photoshop 3.0\0" + b"8BIM\x04\x04\0\0" + (4).to_bytes(4, "big") + b"abcd")
)
SEEDS = [BASELINE, GRAY, PROGRESSIVE, CMYK, RICH, PHOTOSHOP]


# --- probe: decisions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "components"),
    [(BASELINE, 3), (GRAY, 1), (PROGRESSIVE, 3), (RICH, 3), (PHOTOSHOP, 3)],
    ids=["baseline", "gray", "progressive", "exif-icc-restart", "photoshop"],
)
def test_plain_jpegs_pass_through(data: bytes, components: int) -> None:
    info = probe(data, "a.JPEG")
    assert info == ImageInfo("JPEG", 64, 48, components, None)
    assert_agrees_with_pillow(data, info)


def test_fill_bytes_before_a_marker_are_legal() -> None:
    k = BASELINE.index(b"\xff\xdb")
    data = BASELINE[:k] + b"\xff\xff\xff" + BASELINE[k:]
    assert probe(data, "fill.JPEG") == ImageInfo("JPEG", 64, 48, 3, None)


def test_cmyk_and_ycck_are_reencoded() -> None:
    info = probe(CMYK, "c.JPEG")
    assert info == ImageInfo("JPEG", 64, 48, 4, REASON_CMYK)
    assert_agrees_with_pillow(CMYK, info)
    # The Adobe APP14 transform byte (payload offset 11) tells YCCK (2) from CMYK (0).
    k = CMYK.index(b"\xff\xee")
    assert CMYK[k + 4 : k + 9] == b"Adobe" and CMYK[k + 15] == 0
    ycck = patch(CMYK, k + 15, b"\x02")
    assert probe(ycck, "y.JPEG").reencode_reason == REASON_YCCK


def test_png_named_jpeg_is_reencoded_with_its_size() -> None:
    data = encode(colourful(50, 30), "PNG")
    assert probe(data, "n02105855_2933.JPEG") == ImageInfo("PNG", 50, 30, 0, REASON_PNG)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP", "TIFF"])
def test_other_formats_are_reencoded(fmt: str) -> None:
    data = encode(colourful(40, 20), fmt)
    assert probe(data, "x.JPEG") == ImageInfo(fmt, 40, 20, 0, f"{fmt} image")


def test_empty_and_garbage_are_bad_images() -> None:
    with pytest.raises(BadImageError, match=r"^e\.JPEG: empty file \(0 bytes\)$"):
        probe(b"", "e.JPEG")
    with pytest.raises(BadImageError, match=r"g\.JPEG: not an image Pillow can open"):
        probe(b"this is not an image at all" * 10, "g.JPEG")


def test_truncated_jpeg_is_detected_without_decoding() -> None:
    sos = BASELINE.index(b"\xff\xda")
    for cut in (sos + 30, len(BASELINE) // 2 + 200, len(BASELINE) - 1):
        with pytest.raises(BadImageError, match=r"t\.JPEG: truncated JPEG: no end-of-image marker"):
            probe(BASELINE[:cut], "t.JPEG")
    for cut in (3, 20, sos + 3):
        with pytest.raises(BadImageError, match="truncated JPEG: the file ends inside its header"):
            probe(BASELINE[:cut], "t.JPEG")
    # Trailing bytes after EOI are harmless.
    assert probe(BASELINE + b"\0" * 10, "x.JPEG").reencode_reason is None


def test_segment_lengths_that_lie_are_bad_images() -> None:
    k = BASELINE.index(b"\xff\xdb")
    with pytest.raises(BadImageError, match="length 0"):
        probe(patch(BASELINE, k + 2, b"\x00\x00"), "z.JPEG")
    with pytest.raises(BadImageError, match="truncated JPEG"):
        probe(patch(BASELINE, k + 2, b"\xff\xf0"), "z.JPEG")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (0, b"\x0c", "12-bit JPEG"),
        (1, b"\x00\x00", "height 0 .*DNL"),
        (3, b"\x00\x00", "width 0"),
        (5, b"\x02", "2 components"),
        (7, b"\x51", "sampling factors 5x1"),
    ],
)
def test_frame_headers_no_reader_decodes_are_bad(field: int, value: bytes, message: str) -> None:
    with pytest.raises(BadImageError, match=message):
        probe(patch(BASELINE, sof_offset(BASELINE) + field, value), "f.JPEG")


def test_decompression_bomb_headers_are_refused() -> None:
    data = patch(BASELINE, sof_offset(BASELINE) + 1, (30000).to_bytes(2, "big") * 2)
    with pytest.raises(BadImageError, match="30000x30000 image has more than"):
        probe(data, "big.JPEG")


def test_unusual_frames_are_reencoded_when_pillow_decodes_them() -> None:
    k = sof_offset(BASELINE) - 3  # the marker code byte
    # Huffman data labelled arithmetic-coded: libjpeg decodes (garbage) pixels without error.
    arith = patch(BASELINE, k, b"\xc9")
    info = probe(arith, "a.JPEG")
    assert info == ImageInfo("JPEG", 64, 48, 3, "arithmetic-coded JPEG")
    # Labelled lossless: libjpeg-turbo fails on the data, so it is a bad image that says why.
    with pytest.raises(BadImageError, match="lossless JPEG: cannot decode"):
        probe(patch(BASELINE, k, b"\xc3"), "l.JPEG")


def test_stray_bytes_between_segments_force_a_reencode() -> None:
    k = BASELINE.index(b"\xff\xdb")
    data = BASELINE[:k] + b"\x00\x00" + BASELINE[k:]
    info = probe(data, "s.JPEG")
    assert info.reencode_reason == "JPEG with stray bytes between header segments"
    assert_agrees_with_pillow(data, info)


def test_segments_pillow_cannot_parse_never_pass_through() -> None:
    # A Photoshop resource that ends right after its code makes Pillow's whole open fail.
    broken_ps = after_soi(BASELINE, segment(0xED, b"Photoshop 3.0\x008BIM\x04\x04"))
    short_jfif = after_soi(BASELINE[:2] + BASELINE[20:], segment(0xE0, b"JFIF\0"))
    for data in (broken_ps, short_jfif):
        with pytest.raises(Image.UnidentifiedImageError):
            pillow_view(data)
        with pytest.raises(BadImageError, match="not an image Pillow can open"):
            probe(data, "p.JPEG")


def test_probe_agrees_with_pillow_on_the_sample_set(sample) -> None:  # type: ignore[no-untyped-def]
    import tarfile

    with tarfile.open(sample.val_tar) as tf:
        for m in tf.getmembers():
            data = tf.extractfile(m).read()
            assert_agrees_with_pillow(data, probe(data, m.name))


# --- fuzz: only BadImageError, never a hang, and Pillow agrees whenever probe returns --------------

FUZZ = settings(
    max_examples=250,
    deadline=timedelta(seconds=5),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def check_probe(data: bytes) -> None:
    try:
        info = probe(data, "fuzz.JPEG")
    except BadImageError as exc:
        assert exc.name == "fuzz.JPEG" and exc.reason
        return
    assert_agrees_with_pillow(data, info)


@FUZZ
@given(st.binary(max_size=600) | st.binary(max_size=600).map(lambda b: b"\xff\xd8\xff" + b))
def test_fuzz_random_bytes(data: bytes) -> None:
    check_probe(data)


@st.composite
def mutated_jpegs(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(SEEDS))
    header_end = data.index(b"\xff\xda") + 20
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate", "length"]))
        at = draw(st.integers(2, max(2, min(header_end, len(data)))))
        if op == "set":
            data = patch(data, at, draw(st.binary(min_size=1, max_size=3)))
        elif op == "insert":
            data = data[:at] + draw(st.sampled_from([b"\xff", b"\x00", b"\xff\xd9", b"\xff\xc0"])) + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 8)) :]
        elif op == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
        else:  # rewrite the length word of some segment
            k = data.find(b"\xff", at)
            if 0 <= k < len(data) - 3:
                data = patch(data, k + 2, draw(st.integers(0, 0xFFFF)).to_bytes(2, "big"))
    return data


@FUZZ
@given(mutated_jpegs())
def test_fuzz_mutated_jpeg_headers(data: bytes) -> None:
    check_probe(data)


# --- to_rgb_jpeg -----------------------------------------------------------------------------------------


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size and a.mode == b.mode == "RGB"
    pa, pb = a.tobytes(), b.tobytes()
    return sum(abs(x - y) for x, y in zip(pa, pb, strict=True)) / len(pa)


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def test_cmyk_jpeg_becomes_rgb_with_the_source_colours() -> None:
    out, w, h = to_rgb_jpeg(CMYK, "c.JPEG")
    im = decode(out)
    assert (im.format, im.mode, im.size, (w, h)) == ("JPEG", "RGB", (64, 48), (64, 48))
    assert mean_abs_diff(im, colourful()) < 6
    # An inverted reading would turn the colours into their complements, far off.
    inverted = Image.eval(colourful(), lambda v: 255 - v)
    assert mean_abs_diff(im, inverted) > 60
    assert probe(out, "c.JPEG") == ImageInfo("JPEG", 64, 48, 3, None)


def test_cmyk_black_channel_is_applied() -> None:
    # C=0 M=255 Y=255 K=128: red at half brightness, R = 255 * (255 - 128) / 255 = 127.
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 128)), quality=100)
    r, g, b = decode(to_rgb_jpeg(data, "k.JPEG")[0]).getpixel((16, 16))
    assert abs(r - 127) <= 4 and g <= 4 and b <= 4


def test_default_quality_is_100() -> None:
    out, _, _ = to_rgb_jpeg(encode(colourful(), "PNG"), "p.JPEG")
    assert set(decode(out).quantization[0]) == {1}
    lower, _, _ = to_rgb_jpeg(encode(colourful(), "PNG"), "p.JPEG", quality=50)
    assert set(decode(lower).quantization[0]) != {1}


@pytest.mark.parametrize(
    ("img", "fmt", "expect"),
    [
        (Image.new("RGBA", (20, 10), (10, 200, 30, 0)), "PNG", (10, 200, 30)),
        (Image.new("L", (20, 10), 77), "JPEG", (77, 77, 77)),
        (Image.new("I;16", (20, 10), 40000), "PNG", (156, 156, 156)),
        (
            Image.new("RGB", (20, 10), (200, 10, 10)).convert("P", palette=Image.Palette.ADAPTIVE),
            "GIF",
            (200, 10, 10),
        ),
    ],
    ids=["rgba-png", "gray-jpeg", "16bit-png", "palette-gif"],
)
def test_any_mode_becomes_three_channel_rgb(img: Image.Image, fmt: str, expect: tuple[int, int, int]) -> None:
    out, w, h = to_rgb_jpeg(encode(img, fmt), "m.JPEG")
    im = decode(out)
    assert (im.mode, im.size, (w, h)) == ("RGB", (20, 10), (20, 10))
    px = im.getpixel((10, 5))
    assert all(abs(a - b) <= 4 for a, b in zip(px, expect, strict=True)), px


def test_to_rgb_jpeg_names_the_file_when_decoding_fails() -> None:
    with pytest.raises(BadImageError, match=r"^cut\.JPEG: truncated JPEG"):
        to_rgb_jpeg(BASELINE[: len(BASELINE) // 2], "cut.JPEG")
    png = encode(colourful(), "PNG")
    with pytest.raises(BadImageError, match=r"^cut\.png: cannot decode the PNG image"):
        to_rgb_jpeg(png[: len(png) // 2], "cut.png")
    with pytest.raises(BadImageError, match="empty file"):
        to_rgb_jpeg(b"", "e.JPEG")


# --- resize_short_side ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "short", "expect"),
    [
        ((500, 375), 256, (341, 256)),
        ((375, 500), 256, (256, 341)),
        ((300, 300), 256, (256, 256)),
        ((100, 80), 256, (320, 256)),  # small images are scaled up, as im2rec does
        ((333, 500), 160, (160, 240)),
    ],
)
def test_resize_short_side_sizes_as_im2rec(
    size: tuple[int, int], short: int, expect: tuple[int, int]
) -> None:
    out, w, h = resize_short_side(encode(colourful(*size), quality=90), "r.JPEG", short, 95)
    im = decode(out)
    assert (w, h) == expect == im.size
    assert (im.format, im.mode) == ("JPEG", "RGB")
    # Content survives: compare with the source scaled the same way.
    assert mean_abs_diff(im, colourful(*size).resize(expect, Image.Resampling.BILINEAR)) < 6


def test_resize_decodes_to_colour_and_honours_quality() -> None:
    out_hi, w, h = resize_short_side(CMYK, "c.JPEG", 32, 95)
    out_lo, _, _ = resize_short_side(CMYK, "c.JPEG", 32, 30)
    assert (w, h) == (42, 32) and decode(out_hi).mode == "RGB"
    assert len(out_lo) < len(out_hi)
    assert decode(resize_short_side(GRAY, "g.JPEG", 24, 90)[0]).mode == "RGB"


def test_resize_rejects_a_non_positive_size() -> None:
    with pytest.raises(ValueError, match="short_side must be >= 1 pixel, got 0"):
        resize_short_side(BASELINE, "r.JPEG", 0, 95)
