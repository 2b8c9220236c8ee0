# Two entry points for a newcomer: `make repro` (the default pipeline) and `make test`.
# Both create the virtual environment on first use: the exact pins of pyproject.toml, with every
# other package held to the version in requirements.lock (`make lock` refreshes it).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCK := requirements.lock

.PHONY: repro test test-fast install lock fashion-mnist slurm budget-study

# The default pipeline end to end (fetch -> train -> ... -> reports/) with DVC; the stage commands
# find `dvt` through PATH, so the venv's bin/ goes first.
repro: $(STAMP) fashion-mnist
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

# The training-budget study (configs/budget-*.yaml, one config per budget): each budget is a pipeline of
# its own in studies/budget-<B>/ (its params.yaml a copy of the config, the data and the report
# templates linked from here), run by Snakemake; then `dvt trend` sets them side by side in
# results/budget/. A budget already finished is not rerun. Pick budgets with BUDGETS="1x 4x".
BUDGETS ?= 0.5x 1x 2x 4x 8x
CORES ?= 2
budget-study: $(STAMP) fashion-mnist
	@set -e; for b in $(BUDGETS); do \
		d=studies/budget-$$b; mkdir -p $$d/reports data; \
		cmp -s configs/budget-$$b.yaml $$d/params.yaml || cp configs/budget-$$b.yaml $$d/params.yaml; \
		ln -sfn ../../data $$d/data; ln -sfn ../../../reports/templates $$d/reports/templates; \
		echo "== budget $$b: $$d"; \
		PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake -s workflow/Snakefile -d $$d --cores $(CORES); \
	done
	$(BIN)/dvt trend $(addprefix studies/budget-,$(BUDGETS)) --out results/budget

# The SLURM tests (pytest -m slurm: a real one-node cluster, tests/slurm/cluster.sh) mostly wait for
# the scheduler, so they run beside the rest; both must pass.
test: $(STAMP) slurm
	@$(BIN)/python -m pytest -q -m slurm -p no:cacheprovider > .pytest-slurm.log 2>&1 & slurm=$$!; \
	$(BIN)/python -m pytest -q -m "not slurm" --durations=15; rest=$$?; \
	wait $$slurm; cluster=$$?; \
	echo "== the SLURM tests (pytest -m slurm) =="; cat .pytest-slurm.log; rm -f .pytest-slurm.log; \
	[ $$rest = 0 ] && [ $$cluster = 0 ]

# The unit tests alone (no training, no pipeline, no cluster): the models against timm and the paper,
# the threshold search, configs, datasets, files. `make test` runs everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not slurm"

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(LOCK) -e '.[pipeline,test]'
	touch $@

# The whole resolved environment (about 180 packages) of a fresh install from pyproject.toml, built in
# a scratch venv so that nothing installed by hand slips in. Run it after editing the dependencies.
lock:
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install -q -e '.[pipeline,test]'
	{ echo "# Every package of a fresh \`make install\`, resolved from pyproject.toml by \`make lock\` (do not edit)."; \
	  build/lock-venv/bin/python -m pip freeze --exclude-editable; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf build/lock-venv

# Debian ships Fashion-MNIST as a package; on a Debian machine where we are root (no internet but the
# package mirror) install it, elsewhere `dvt fetch` downloads the files with torchvision instead.
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -q && apt-get install -y -q dataset-fashion-mnist) \
		|| echo "note: apt-get could not install dataset-fashion-mnist; dvt fetch will download it"; \
	fi

# The SLURM test cluster's daemons (slurmctld, slurmd, slurmdbd with MariaDB, munge): installed from
# Debian as root, as fashion-mnist above; elsewhere the SLURM tests are skipped with the reason.
slurm:
	@if ! command -v slurmctld >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
			slurm-wlm slurmdbd munge mariadb-server >/dev/null) \
		|| echo "note: apt-get could not install SLURM; the SLURM tests will be skipped"; \
	fi
