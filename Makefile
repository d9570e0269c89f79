# kvmhooks: lab and developer entry points (run as root on the lab machine).
.PHONY: setup test demo lint rpm bench

VENV_PY := .venv/bin/python
EL ?= 9

setup:
	scripts/lab-setup

test: setup
	$(VENV_PY) -m pytest

demo: setup
	$(VENV_PY) -m demo

bench: setup
	$(VENV_PY) -m bench

lint:
	.venv/bin/ruff check .

# The RPM (noarch) for EL$(EL) from this work tree, into build/rpm (needs rpmbuild:
# Debian's `rpm` package, which scripts/lab-setup installs). `make rpm EL=10` for EL10.
rpm:
	scripts/build-rpm --el $(EL)
