"""Two preparations side by side, as a deployment would ship them: the reference TFRecords refreshed
weekly from a shared folder, and NVIDIA RecordIO triggered by hand. Each DAG has its own id, defaults and
Asset (``<dag_id>_prepared``), and its runs have their own Dataset report."""

from airflow_resnet_prep import mlperf_resnet_prep_dag

weekly_tfrecords = mlperf_resnet_prep_dag(
    "example_resnet_prep_reference",
    defaults={
        "implementation": "reference",
        "data_dir": "/data/imagenet/tfrecords",
        "train_source": "/data/imagenet/ILSVRC2012_img_train.tar",
        "val_source": "/data/imagenet/ILSVRC2012_img_val.tar",
        "labels_source": "/data/imagenet/imagenet_2012_validation_synset_labels.txt",
    },
    schedule="@weekly",
    tags=["example", "mlperf"],
)

recordio_by_hand = mlperf_resnet_prep_dag(
    "example_resnet_prep_nvidia",
    defaults={"implementation": "nvidia", "data_dir": "/data/imagenet/recordio"},
    schedule=None,
    tags=["example", "mlperf"],
)
