# The two entry points of the README's quick start. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
DATA ?= ../shared/data/cifar10-jpeg

# torch is installed first, by itself, so that the build chosen here is the one kept.
# `pip install torch==2.13.0` takes the CPU build only where pip finds it first (a local
# wheel folder, as on distree's development machines); on an ordinary Linux x86 machine it
# is the CUDA build (several GB). For the CPU build there:
#   make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(TORCH)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

.PHONY: demo quickstart test test-fast lint
demo: $(VENV)/.installed
	$(VENV)/bin/distree demo --data $(DATA)

quickstart: $(VENV)/.installed
	$(VENV)/bin/distree quickstart --data $(DATA)

# Test processes in parallel (pytest-xdist): one per CPU, at most 4; a module's tests in one
# process, so that its module fixtures (clusters) start once.
PYTEST_PARALLEL ?= -n auto --maxprocesses 4 --dist loadscope

# The whole suite, real processes included (tests marked e2e); CI runs this.
test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests $(PYTEST_PARALLEL)

# Everything but the tests that start processes (e2e) or take long (slow): for every edit.
test-fast: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests -m "not e2e and not slow" $(PYTEST_PARALLEL)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

.PHONY: proto
proto: $(VENV)/.installed  # regenerate the committed gRPC code from distree.proto
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	cd src && ../$(VENV)/bin/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. distree/runtime/proto/distree.proto

# Every committed figure that depends on a trained run, re-made by its command:
#   make results RUN=models/fashion-mnist RUN_DATA=../shared/data/fashion-mnist
# (RUN/calibration.json; RUN/eval.json and eval.txt; the simulator report and each shipped
# scenario under reports/NAME/; the int8 export evaluated as it ships, RUN/eval-onnxruntime-int8.*;
# the runtime demo, RUN/demo.json). The tables in README.md and docs/results.md then come from
# bench/tools/results_table.py.
RUN ?= models/cifar10
RUN_DATA ?= $(DATA)
EXPORT_DIR := build/export-$(notdir $(RUN))
.PHONY: results
results: $(VENV)/.installed
	$(VENV)/bin/distree calibrate $(RUN) --data $(RUN_DATA) --max-drop 0.5
	$(VENV)/bin/distree eval $(RUN) --data $(RUN_DATA) --json $(RUN)/eval.json > $(RUN)/eval.txt
	$(VENV)/bin/distree report $(RUN) --data $(RUN_DATA) --out reports/$(notdir $(RUN))
	for s in scenarios/*.yaml; do \
	  $(VENV)/bin/distree simulate $$s $(RUN) --data $(RUN_DATA) \
	    --json reports/$(notdir $(RUN))/simulate-$$(basename $$s .yaml).json > /dev/null || exit 1; \
	done
	rm -rf $(EXPORT_DIR)
	$(VENV)/bin/distree export $(RUN) --out $(EXPORT_DIR) --int8 --data $(RUN_DATA)
	$(VENV)/bin/distree eval $(RUN) --data $(RUN_DATA) --backend onnxruntime --export $(EXPORT_DIR) \
	  --json $(RUN)/eval-onnxruntime-int8.json --out-dir $(EXPORT_DIR)/curves > $(RUN)/eval-onnxruntime-int8.txt
	$(VENV)/bin/distree demo --run-dir $(RUN) --data $(RUN_DATA) --json $(RUN)/demo.json
