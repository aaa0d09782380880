# Two commands do all the set-up on a fresh machine:
#   make demo   virtual environment, requirements, then search -> decode -> retrain -> predict
#               on the generated synthetic dataset (CPU-sized, about 10 minutes on 2 cores)
#   make test   virtual environment, requirements, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= run/demo

.PHONY: demo test install clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

test: install
	$(PY) -m pytest -q

# The demo writes into its own folder and starts it afresh each time.
demo: install clean-demo
	$(PY) train_autodeeplab.py --dataset synthetic --out-dir $(DEMO_DIR)/search
	$(PY) decode_autodeeplab.py --resume $(DEMO_DIR)/search/checkpoint.pth.tar

clean-demo:
	rm -rf $(DEMO_DIR)
