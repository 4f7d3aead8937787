"""NvidiaPrepOperator: MXNet RecordIO for NVIDIA's MXNet/DALI ResNet, identical to im2rec's output."""

from __future__ import annotations

from typing import Any

from airflow_resnet_prep.operators.base import default
from airflow_resnet_prep.operators.convert import ConvertOperator


class NvidiaPrepOperator(ConvertOperator):
    """Write ``recordio/{train,val}.{lst,rec,idx}`` as ``im2rec.py --list --recursive`` then
    ``--pass-through`` would (docs/formats.md, RecordIO), without MXNet, a container or an extracted copy.

    The work is :class:`airflow_resnet_prep.converters.recordio.RecordIOConverter`; see
    :class:`~airflow_resnet_prep.operators.convert.ConvertOperator` for ``step`` and the arguments every
    conversion takes. Pushes ``preprocessed_path`` (the RecordIO folder) to XCom when the output is
    complete. Defaults are the params' (:data:`airflow_resnet_prep.params.PARAMS`).

    :param resize: Short side to re-encode to, as im2rec's ``--resize`` (0 = pass-through). (templated)
    :param quality: JPEG quality when resizing, as im2rec's ``--quality``. (templated)
    """

    implementation = "nvidia"
    output_key = "preprocessed_path"
    # No mxnet_version: it changes no byte. A DAG records it in the manifest through
    # PublishOperator(manifest_params={"mxnet_version": ...}), as the factory does.
    template_fields = (*ConvertOperator.common_fields, "resize", "quality")
    ui_color = "#e8f5e9"

    def __init__(
        self,
        *,
        resize: int | str = default("resize"),
        quality: int | str = default("quality"),
        **kwargs: Any,
    ) -> None:
        self.keep(locals())
        super().__init__(**kwargs)
