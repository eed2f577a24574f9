# sshkeep — build, test, demo, bench.  Every target installs what it needs.
# Owners: build/* (build recipe), tests/* (tests), tests/cross (QEMU), tests/bench (bench).

PYTHON    ?= /usr/bin/python3
VENV      := build/venv
VPY       := $(VENV)/bin/python
PYZ       := build/sshkeep.pyz

.PHONY: all deps venv build packages test unit cross demo bench clean

all: build

deps:            ## system packages (apt) the tests, demo and bench need
	sh build/deps.sh

$(VENV)/.stamp: build/requirements.txt
	sh build/venv.sh $(PYTHON) $(VENV)
	touch $@

venv: deps $(VENV)/.stamp

build: venv      ## build/sshkeep.pyz with the pinned shiv
	sh build/build.sh $(VPY) $(PYZ)

packages: build   ## build/out/sshkeep_VERSION_all.ipk (OpenWrt opkg), .deb, sshkeep-VERSION-r1.apk (25.12), reproducible
	$(PYTHON) build/packages.py $(PYZ) build/out
	$(PYTHON) build/apk.py $(PYZ) build/out

unit: build      ## everything but the QEMU runs
	$(VPY) -m pytest -q -p no:cacheprovider tests --ignore=tests/cross --ignore=tests/bench

cross: build     ## the same tests under QEMU (armhf, arm64, mipsel) + newer dropbear/python
	$(VPY) -m pytest -q -p no:cacheprovider tests/cross

test: build      ## every test: unit, integration (netns), build, cross
	$(VPY) -m pytest -q -p no:cacheprovider tests --ignore=tests/bench

demo: build      ## throwaway sshd, the agent keeping a reverse tunnel, status
	$(VPY) tests/demo.py $(PYZ)

bench: build     ## heal times and footprint against autossh; rewrites docs/benchmarks.md's results
	$(VPY) tests/bench/run.py $(PYZ)

clean:
	rm -rf $(VENV) $(PYZ) build/out
