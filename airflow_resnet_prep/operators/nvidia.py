"""NvidiaPrepOperator: MXNet RecordIO for NVIDIA's MXNet/DALI ResNet, identical to im2rec's output."""

from __future__ import annotations

from typing import Any

from airflow_resnet_prep.operators.convert import ConvertOperatorBase


class NvidiaPrepOperator(ConvertOperatorBase):
    """Write ``recordio/{train,val}.{lst,rec,idx}`` as ``im2rec.py --list --recursive`` then
    ``--pass-through`` would (docs/formats.md, RecordIO), without MXNet, a container or an extracted copy.

    The work is :class:`airflow_resnet_prep.converters.recordio.RecordIOConverter`; see
    :class:`~airflow_resnet_prep.operators.convert.ConvertOperatorBase` for ``step``. Pushes
    ``preprocessed_path`` (the RecordIO folder) to XCom when the output is complete.

    :param data_dir: Working folder holding the catalogs; output goes to ``data_dir/recordio``. (templated)
    :param resize: Short side to re-encode to, as im2rec's ``--resize`` (0 = pass-through). (templated)
    :param quality: JPEG quality when resizing, as im2rec's ``--quality`` (default 95). (templated)
    :param on_bad_image: ``"fail"`` (default) or ``"skip"`` (left out of .lst, .rec and .idx alike). (templated)
    :param decode_check: Decode every image with TensorFlow's JPEG decoder before writing it; one that
        fails follows ``on_bad_image``. Needs the ``tensorflow`` extra. Default off. (templated)
    :param workers: Processes used by this task (0 = all cores). (templated)
    :param force: Replace an unfinished conversion with different params. (templated)
    :param step: ``"all"``, ``"plan"``, ``"units"`` or ``"finish"``.
    :param unit_ids: With ``step="units"``: the units to run (mappable). (templated)
    :param fanout: With ``step="plan"``: how many batches of units to return; 0 (default) = auto, one
        batch with a local executor, eight with a distributed one. (templated)
    """

    output_key = "preprocessed_path"
    # No mxnet_version: it changes no byte. A DAG records it in the manifest through
    # PublishOperator(manifest_params={"mxnet_version": ...}), as the factory does.
    template_fields = (*ConvertOperatorBase.common_fields, "resize", "quality")
    ui_color = "#e8f5e9"

    def __init__(
        self,
        *,
        resize: int | str = 0,
        quality: int | str = 95,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.resize = resize
        self.quality = quality

    def make_converter(self):
        from airflow_resnet_prep.converters.recordio import RecordIOConverter
        from airflow_resnet_prep.operators.values import as_bool, as_int

        return RecordIOConverter(
            resize=as_int(self.resize, "resize"),
            quality=as_int(self.quality, "quality"),
            on_bad_image=self.on_bad_image,
            decode_check=as_bool(self.decode_check),
        )
