"""mlperf_resnet_prep: ImageNet -> MLPerf ResNet-50 training inputs (NVIDIA RecordIO or reference TFRecords).

The pipeline ships in the package (``airflow_resnet_prep.factory``); this file only builds it. Its
schedule and param defaults come from the ``[resnet_prep]`` config section (``schedule``, ``data_dir``,
``train_source``, ``val_source``, any other param; ``AIRFLOW__RESNET_PREP__<OPTION>``). With a schedule,
``data_dir`` and both sources must have defaults there, or the file fails to parse saying so.
"""

from airflow_resnet_prep import mlperf_resnet_prep_dag

dag = mlperf_resnet_prep_dag()
