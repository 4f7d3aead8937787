"""A training DAG as the README shows it: scheduled on the Asset ``mlperf_resnet_prepared``, it reads the
output paths from the triggering events' extra. For the cluster tests it appends one JSON line per event
to the file named by ``PREPARED_CONSUMER_LOG`` (set on the workers), which the test reads."""

from __future__ import annotations

import json
import os

import pendulum
from airflow.sdk import DAG, Asset, task

PREPARED = Asset(name="mlperf_resnet_prepared", uri="file:///mlperf-resnet-prep/prepared")

with DAG(
    dag_id="prepared_consumer",
    schedule=[PREPARED],
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["test"],
):

    @task
    def train(triggering_asset_events=None, run_id=None) -> list[dict]:
        seen = []
        for event in triggering_asset_events[PREPARED]:
            extra = dict(event.extra)
            data = extra.get("tfrecords_path") or extra.get("preprocessed_path")
            seen.append(
                {
                    "consumer_run_id": run_id,
                    "source_dag_id": event.source_dag_id,
                    "source_run_id": event.source_run_id,
                    "extra": extra,
                    "data": data,
                    "data_exists": bool(data) and os.path.isdir(data),
                }
            )
        with open(os.environ["PREPARED_CONSUMER_LOG"], "a", encoding="utf-8") as fh:
            for line in seen:
                fh.write(json.dumps(line) + "\n")
        return seen

    train()
