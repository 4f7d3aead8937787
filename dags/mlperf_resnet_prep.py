"""mlperf_resnet_prep: ImageNet -> MLPerf ResNet-50 training inputs (NVIDIA RecordIO or reference TFRecords).

The pipeline ships in the package (``airflow_resnet_prep.factory``); this file only builds it. Defaults
for a scheduled run come from the ``[resnet_prep]`` config section (``data_dir``, ``train_source``,
``val_source``, ``labels_source``, ``schedule``; the older ``MLPERF_RESNET_PREP_*`` variables work too).
"""

from airflow_resnet_prep import mlperf_resnet_prep_dag

dag = mlperf_resnet_prep_dag()
