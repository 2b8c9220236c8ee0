# Two entry points for a newcomer: `make repro` (the default pipeline) and `make test`.
# Both create the virtual environment from the exact pins in pyproject.toml on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: repro test install fashion-mnist

# The default pipeline end to end (fetch -> train -> ... -> reports/) with DVC; the stage commands
# find `dvt` through PATH, so the venv's bin/ goes first.
repro: $(STAMP) fashion-mnist
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# Debian ships Fashion-MNIST as a package; on a Debian machine where we are root (no internet but the
# package mirror) install it, elsewhere `dvt fetch` downloads the files with torchvision instead.
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -q && apt-get install -y -q dataset-fashion-mnist) \
		|| echo "note: apt-get could not install dataset-fashion-mnist; dvt fetch will download it"; \
	fi
