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
