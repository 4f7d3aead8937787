"""``python -m airflow_resnet_prep.verify DIR_OR_URI [--decode]``: is this copy of the data set intact?

Checks a prepared data set (a local folder, e.g. a copy on a training node, or an ``s3://`` / ``gs://``
prefix) against its ``manifest.json`` without the sources: files, sizes, CRC-32C checksums, record
counts, record framing, labels, per-class counts and the ``.idx`` / ``.lst`` against the data files;
``--decode`` also decodes every image with TensorFlow's JPEG decoder, as the reference trainer does.
See :mod:`airflow_resnet_prep.verify.core` for the list, and :class:`~airflow_resnet_prep.operators.verify.VerifyOperator`
for the same check as an Airflow task.
"""

from airflow_resnet_prep.verify.core import VerifyReport, check_or_raise, verify
from airflow_resnet_prep.verify.scan import Finding

__all__ = ["Finding", "VerifyReport", "check_or_raise", "verify"]
