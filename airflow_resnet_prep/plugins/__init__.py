"""The Airflow UI side of the provider: a run's dataset report behind Airflow's own access checks.

- :mod:`.links`: the URLs (plugin app prefix, the DAG run tab) and the ``publish`` task's extra link;
  light enough for workers to import.
- :mod:`.report_app`: the FastAPI app that serves ``data_dir/report/`` of one DAG run.
- :mod:`.report_plugin`: the ``AirflowPlugin`` registered through the ``airflow.plugins`` entry point.
"""
