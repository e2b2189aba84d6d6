# This file is part of Tryton.  The COPYRIGHT file at the top level of
# this repository contains the full copyright notices and license terms.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all demo test test-faults bench lint doc clean

all: test

$(STAMP): setup.py tryton.cfg
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,sale]' flake8 isort sphinx
	touch $@

$(VENV): $(STAMP)

demo: $(STAMP)
	$(BIN)/python -P demo/run.py

test: $(STAMP)
	$(BIN)/python -P tests/run.py

test-faults: $(STAMP)
	$(BIN)/python -P tests/run.py -k '*fault*'

bench: $(STAMP)
	$(BIN)/python -P benchmarks/run.py

lint: $(STAMP)
	$(BIN)/flake8 .
	$(BIN)/isort --check-only --diff .

doc: $(STAMP)
	$(BIN)/sphinx-build -W -b html doc doc/_build/html

clean:
	rm -rf $(VENV) .demo doc/_build
