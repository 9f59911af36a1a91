# Two commands matter on a fresh machine:
#   make demo   sets up .venv, runs train.py on its embedded default (synthetic, CPU, minutes) and draws
#               its predictions on four validation images into workdirs/demo/predictions/
#   make test   sets up .venv and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2

.PHONY: venv demo test bench bench-quick clean

$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

# glibc backs XLA:CPU's large per-step buffers with huge pages (psa_jax/runtime/host_memory.py).
HOST_ENV ?= GLIBC_TUNABLES=glibc.malloc.hugetlb=1

# The demo's synthetic COCO (written by train.py under its workdir) and four of its val images.
DEMO_COCO := workdirs/demo/data/synthetic_coco
DEMO_IMAGES := $(addprefix $(DEMO_COCO)/val2017/,000001000000.jpg 000001000001.jpg 000001000002.jpg 000001000003.jpg)

demo: venv
	$(HOST_ENV) $(PY) train.py --workdir=workdirs/demo
	$(HOST_ENV) $(PY) -m psa_jax.tools.predict --workdir=workdirs/demo --out=workdirs/demo/predictions \
		--boxes=$(DEMO_COCO)/annotations/person_detections_val2017.json $(DEMO_IMAGES)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS) tests

bench: venv
	$(PY) benchmarks/run.py

bench-quick: venv
	$(PY) benchmarks/run.py --quick

clean:
	rm -rf $(VENV) workdirs .pytest_cache
