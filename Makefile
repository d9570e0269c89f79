# kvmhooks: lab and developer entry points (run as root on the lab machine).
.PHONY: setup test test-el9-floor test-el10 test-current vmtest demo lint rpm srpm dist bench

VENV_PY := .venv/bin/python
EL ?= 9
# The EL9-floor tier's pytest: bullseye's, in the root that scripts/el9-floor-root builds.
FLOOR_PYTEST := scripts/in-el9-floor python3 -m pytest -p no:cacheprovider

setup:
	scripts/lab-setup

# Four tiers, one after another; test-current leaves the lab on today's libraries, which
# the systemd host VM's tier (vmtest) builds its wheel with.
test: test-el9-floor test-el10 test-current vmtest

# EL9's floor (Python 3.9, pyroute2 0.5.14, pyudev 0.22, lxml 4.6, libvirt-python 7.0): the
# unit tests, and the system tests that need no libvirtd, hook or agent of this host
# (marked floor), on the real kernel beside the lab's udevd.
test-el9-floor: setup
	$(FLOOR_PYTEST) tests/unit
	$(FLOOR_PYTEST) -m floor tests/system

# EL10's versions (pyproject.toml [tool.kvmhooks.tiers.el10]) in .venv-el10: the hooks and
# the agent run them too. The e2e tests (booted guests' packets through what kvmhooks
# built) run in the current tier only: what the libraries do is in the system tests.
test-el10:
	KVMHOOKS_TIER=el10 scripts/lab-setup
	.venv-el10/bin/python -m pytest tests/unit tests/system

test-current: setup
	$(VENV_PY) -m pytest

# The systemd host VM (tests/vm): builds or reuses its image, boots it under TCG; two
# lanes side by side, at most two VMs at a time (tests/vm/lanes.py).
vmtest: setup
	$(VENV_PY) -m tests.vm.lanes

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
