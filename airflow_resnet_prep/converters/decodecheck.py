"""The conversion's opt-in decode check (param ``decode_check``, docs/formats.md, Checks), shared by both formats.

With the check on, each unit decodes every image it is about to write with TensorFlow's JPEG decoder
(:class:`~airflow_resnet_prep.formats.tfdecode.JpegDecoder`, what the reference trainer decodes with),
after any re-encoding, so the bytes checked are the bytes written. An image that fails follows
``on_bad_image`` like any unreadable one: ``fail`` names it, ``skip`` leaves it out and lists it (with
the decoder's reason) in the manifest and the report.

Off by default: it costs about 2 ms of CPU per image (2.1-2.5 ms measured; the conversion, ~0.3 ms),
and TensorFlow's import (~1.5 s, hundreds of MB) happens only in processes of a run that has it on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_resnet_prep.formats.tfdecode import JpegDecoder

_DECODER: JpegDecoder | None = None  # one per process: TensorFlow's eager context is per process


def decode_check_param(value: Any) -> dict[str, bool]:
    """The converter params entry for ``decode_check``: present only when on.

    Absent when off so that the params, and with them the plan id and the manifest's record of the
    output's params, stay those of versions without the check: turning it on reconverts (the output may
    differ: images left out), leaving it off reuses an output written before the check existed.
    """
    if not isinstance(value, bool) and value not in (0, 1):
        raise ValueError(f"decode_check must be true or false, got {value!r}")
    return {"decode_check": True} if value else {}


def make_decoder(params: dict[str, Any]) -> JpegDecoder | None:
    """This process's decoder when the params ask for the check (TensorFlow imported on first use)."""
    global _DECODER
    if not params.get("decode_check"):
        return None
    if _DECODER is None:
        from airflow_resnet_prep.formats.tfdecode import JpegDecoder

        _DECODER = JpegDecoder()
    return _DECODER


def prepare_decoder(params: dict[str, Any]) -> None:
    """Import TensorFlow in the parent before worker processes are forked, when the check is on, so
    that each worker does not import it again (and a missing TensorFlow fails once, up front).
    Only the import: no op runs before the fork (TensorFlow's thread pools must start in the child)."""
    if params.get("decode_check"):
        from airflow_resnet_prep.formats.tfdecode import load_tensorflow

        load_tensorflow()
