# Two commands do everything on a fresh machine:
#   make reproduce   - the main job: every notebook on the embedded data (preset tiny)
#   make test        - the test suite
# Both create .venv and install the pinned requirements when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hrnas-installed
PRESET ?= tiny
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv test test-fast reproduce profile bench clean-venv

$(STAMP): requirements.txt pyproject.toml
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null && ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then \
		echo "installing Debian libusb-1.0-0 (needed by open3d)"; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends libusb-1.0-0 >/dev/null; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

reproduce: $(STAMP)
	$(VENV)/bin/hrnas reproduce --preset $(PRESET)

profile: $(STAMP)
	$(VENV)/bin/hrnas profile all

bench: $(STAMP)
	$(PY) benchmarks/bench_supernet.py

clean-venv:
	rm -rf $(VENV)
