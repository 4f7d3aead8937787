"""A DAG of another shape built from the package's operators, as a user might write one: its own params
(none of the pipeline's names but two), its own task ids, one-task conversion (``step="all"``), no branch,
and a publish task called ``announce``."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_resnet_prep.operators.fetch import FetchImagenetOperator
from airflow_resnet_prep.operators.publish import PublishOperator
from airflow_resnet_prep.operators.relabel import RelabelValOperator
from airflow_resnet_prep.operators.tfrecord import ConvertTFRecordOperator

with DAG(
    dag_id="custom_shape",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    params={
        "workdir": Param("", type="string"),
        "imagenet": Param("", type="string", description="folder holding the three ImageNet files"),
        "team": Param("vision", type="string"),
    },
):
    fetch = FetchImagenetOperator(
        task_id="get_imagenet",
        data_dir="{{ params.workdir }}",
        train_source="{{ params.imagenet }}/ILSVRC2012_img_train.tar",
        val_source="{{ params.imagenet }}/ILSVRC2012_img_val.tar",
    )
    labels = RelabelValOperator(
        task_id="labels",
        data_dir="{{ params.workdir }}",
        labels_source="{{ params.imagenet }}/imagenet_2012_validation_synset_labels.txt",
    )
    convert = ConvertTFRecordOperator(
        task_id="to_tfrecords", data_dir="{{ params.workdir }}", train_shards=3, val_shards=1, workers=1
    )
    announce = PublishOperator(
        task_id="announce",
        data_dir="{{ params.workdir }}",
        implementation="reference",
        fetch_task_id="get_imagenet",
        relabel_task_id="labels",
        finish_task_id="to_tfrecords",
    )
    fetch >> labels >> convert >> announce
