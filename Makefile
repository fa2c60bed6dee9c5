# The two entry points of the README's quick start. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
DATA ?= ../shared/data/cifar10-jpeg

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: an unpinned install would fetch a multi-GB CUDA build.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

.PHONY: demo quickstart test
demo: $(VENV)/.installed
	$(VENV)/bin/distree demo --data $(DATA)

quickstart: $(VENV)/.installed
	$(VENV)/bin/distree quickstart --data $(DATA)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests

.PHONY: proto
proto: $(VENV)/.installed  # regenerate the committed gRPC code from distree.proto
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	cd src && ../$(VENV)/bin/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. distree/runtime/proto/distree.proto

# Every committed figure that depends on a trained run, re-made by its command:
#   make results RUN=models/fashion-mnist RUN_DATA=../shared/data/fashion-mnist
# (RUN/eval.json and eval.txt, the simulator report and each shipped scenario under reports/NAME/).
RUN ?= models/cifar10
RUN_DATA ?= $(DATA)
.PHONY: results
results: $(VENV)/.installed
	$(VENV)/bin/distree eval $(RUN) --data $(RUN_DATA) --json $(RUN)/eval.json > $(RUN)/eval.txt
	$(VENV)/bin/distree report $(RUN) --data $(RUN_DATA) --out reports/$(notdir $(RUN))
	for s in scenarios/*.yaml; do \
	  $(VENV)/bin/distree simulate $$s $(RUN) --data $(RUN_DATA) \
	    --json reports/$(notdir $(RUN))/simulate-$$(basename $$s .yaml).json > /dev/null || exit 1; \
	done
