# Two commands do all the set-up on a fresh machine:
#   make demo   virtual environment, requirements, then search -> decode -> retrain -> predict
#               on a generated dataset, by default the planted context task, whose answer is
#               known (CPU-sized: 6-10 min on 2 cores from a fresh clone with .venv installed)
#   make test   virtual environment, requirements, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= run/demo
# Any generated dataset: planted_context (its search must find a coarse path), planted_sparks
# (max_pool_3x3), planted_operation or synthetic.
DEMO_DATASET ?= planted_context
# requirements-cpu.txt pins a CPU build of torch; REQUIREMENTS=requirements.txt keeps the torch
# already in $(VENV) (a CUDA build on a GPU machine; README, Set-up).
REQUIREMENTS ?= requirements-cpu.txt
# Extra flags for the demo's stages (the test suite runs the demo with tiny ones).
SEARCH_FLAGS ?=
RETRAIN_FLAGS ?=

.PHONY: demo test test-gpu gpu-check install clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r $(REQUIREMENTS)
	touch $@

test: install
	$(PY) -m pytest -q

# The numerical tests (marker `device`) on the GPU; everything else is the CPU pass's.
test-gpu: install
	AUTODEEPLAB_TEST_DEVICE=cuda $(PY) -m pytest -q -m device

# All the GPU checks in one call, with the machine's own python3 and torch (docs/gpus.md).
gpu-check:
	python3 bench/gpu_check.py $(GPU_CHECK_FLAGS)

# The demo writes into its own folder and starts it afresh each time.
demo: install clean-demo
	$(PY) train_autodeeplab.py --dataset $(DEMO_DATASET) --out-dir $(DEMO_DIR)/search $(SEARCH_FLAGS)
	$(PY) decode_autodeeplab.py --resume $(DEMO_DIR)/search/checkpoint.pth.tar
	$(PY) train.py --dataset $(DEMO_DATASET) --genotype $(DEMO_DIR)/search/genotype.json \
		--out-dir $(DEMO_DIR)/retrain $(RETRAIN_FLAGS)
	$(PY) write_samples.py --dataset $(DEMO_DATASET) --out-dir $(DEMO_DIR)/images --count 4
	$(PY) predict.py --checkpoint $(DEMO_DIR)/retrain/best.pth.tar \
		--input $(DEMO_DIR)/images --out-dir $(DEMO_DIR)/predictions

clean-demo:
	rm -rf $(DEMO_DIR)
