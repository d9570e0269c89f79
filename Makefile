# kvmhooks: lab and developer entry points (run as root on the lab machine).
.PHONY: setup test demo lint rpm srpm dist bench

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

# The RPM (noarch) for EL$(EL) from this tree, a git checkout or an exported one, into
# build/rpm (needs rpmbuild: Debian's `rpm` package, which scripts/build-rpm installs when
# missing). `make rpm EL=10` for EL10; `make srpm` the source RPM; `make dist` the release
# tarball, kvmhooks-VERSION.tar.gz, for `rpmbuild -ta`.
rpm:
	scripts/build-rpm --el $(EL)

srpm:
	scripts/build-rpm --el $(EL) --srpm

dist:
	scripts/build-rpm --tarball --outdir build/dist
