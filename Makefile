# RestoreBench — two commands: `make demo` and `make test`.
# Every target sets up (or refreshes) the project virtualenv first; nothing is installed globally.
#
# TORCH=cpu    (default) pin torch to the CPU build 2.13.0 through requirements/constraints-cpu.txt
# TORCH=system reuse the torch (e.g. your CUDA build) already installed for $(PY): the venv sees the
#              system site-packages and pip is pinned to that exact torch/torchvision version.
PY     ?= python3
DEMO_SWEEP_OTHERS ?= pnp_admm,pnp_admm_dncnn,mcg,ddrm,dps,diffpir,reddiff,spgd,dcdp,ddnm,pigdm,daps,scoresde
VENV   ?= .venv
TORCH  ?= cpu
PYTEST_ARGS ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.restorebench-$(TORCH)

ifeq ($(TORCH),system)
VENV_FLAGS  := --system-site-packages
CONSTRAINTS := $(VENV)/constraints-system.txt
else
VENV_FLAGS  :=
CONSTRAINTS := requirements/constraints-cpu.txt
endif

.PHONY: venv test demo demo-refresh demo-sweep table1 diagnostics perf gpu-path checkpoints clean-venv
venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints-cpu.txt requirements/nodeps.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV_FLAGS) $(VENV)
ifeq ($(TORCH),system)
	@$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(CONSTRAINTS)
	@$(BIN)/python -c "import torchvision; print('torchvision==' + torchvision.__version__)" >> $(CONSTRAINTS) 2>/dev/null || true
endif
	$(BIN)/python -m pip install -q --disable-pip-version-check -c $(CONSTRAINTS) -e '.[test,demo-data]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -c $(CONSTRAINTS) -r requirements/nodeps.txt
	$(BIN)/python -m bench.assets
	@touch $(STAMP)

test: venv
	@bash tests/setup_browser.sh   # Debian chromium + chromium-driver for tests/test_report_browser.py (idempotent)
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

# `make demo` writes to results/demo-local/ (git-ignored), so running it never modifies committed files;
# `make demo-refresh` deliberately regenerates the committed copy in results/demo/ (then commit it).
DEMO_RESULTS ?= results/demo-local
demo: venv
	$(BIN)/python -m bench run --protocol demo --results $(DEMO_RESULTS)
	$(BIN)/python -m bench table --protocol demo --results $(DEMO_RESULTS)
	$(BIN)/python -m bench report --protocol demo --results $(DEMO_RESULTS)

demo-refresh: venv
	$(BIN)/python -m bench run --protocol demo --results results/demo
	$(BIN)/python -m bench table --protocol demo --results results/demo
	$(BIN)/python -m bench report --protocol demo --results results/demo

# tune every demo solver on the validation split (equal budget: 8 trials x 2 images per solver and task; two
# processes on two cores, DPPS alone in one), then the published-vs-tuned table (results/demo-sweep/)
demo-sweep: venv
	$(BIN)/python -m bench sweep --protocol demo --solvers dpps --trials 8 --images 2 & \
	$(BIN)/python -m bench sweep --protocol demo --solvers $(DEMO_SWEEP_OTHERS) --trials 8 --images 2; \
	s=$$?; wait $$! && test $$s -eq 0
	$(BIN)/python -m bench sweep --protocol demo --published-vs-tuned

diagnostics: venv  # SPGD paper Fig. 2 diagnostics: DPS / SPGD variants, exact Gaussian prior (results/diagnostics)
	$(BIN)/python -m bench diagnose --preset spgd-fig2 --images 8

table1: venv
	$(BIN)/python -m bench run --protocol table1 $(if $(LIMIT),--limit $(LIMIT)) $(if $(DATASETS),--datasets $(DATASETS)) $(if $(SOLVERS),--solvers $(SOLVERS))
	$(BIN)/python -m bench table --protocol table1

# NAMES: prior checkpoints (priors/registry.py) and/or `inception` (FID/KID weights, bench/fid.py); default: all
checkpoints: venv
	$(if $(NAMES),$(if $(filter-out inception,$(NAMES)),$(BIN)/python -m bench checkpoints $(filter-out inception,$(NAMES))),$(BIN)/python -m bench checkpoints)
	$(if $(NAMES),$(if $(filter inception,$(NAMES)),$(BIN)/python -m bench.fid --download),$(BIN)/python -m bench.fid --download)

perf: venv
	$(BIN)/python -m pip install -q --disable-pip-version-check -c $(CONSTRAINTS) -e '.[perf]'
	$(BIN)/python -m benchmarks.perf $(if $(DEVICE),--device $(DEVICE))
	$(BIN)/python -m benchmarks.operator_speed

gpu-path: venv
	$(BIN)/python -m benchmarks.gpu_path

clean-venv:
	rm -rf $(VENV)
