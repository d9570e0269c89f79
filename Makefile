# kvmhooks: lab and developer entry points (run as root on the lab machine).
.PHONY: setup test demo lint

VENV_PY := .venv/bin/python

setup:
	scripts/lab-setup

test: setup
	$(VENV_PY) -m pytest

demo: setup
	$(VENV_PY) -m demo

lint:
	.venv/bin/ruff check .
