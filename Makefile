# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO := demo_out

.PHONY: test demo bench bench-quality bench-robustness bench-compact guarantees clean help

help:
	@echo "make demo           set up, extract BBC News with the packaged MiniLM, train Y-Tuning + linear, compare"
	@echo "make test           set up and run the whole test suite (CPU, offline)"
	@echo "make bench          CPU benchmarks (extraction overhead, naive loop, disk, read-back)"
	@echo "make bench-quality  Y-Tuning vs full fine-tuning on the embedded default"
	@echo "make bench-robustness  accuracy on perturbed test copies, per method"
	@echo "make bench-compact  encodings and projections: bytes per token, throughput, epoch time, accuracy"
	@echo "make guarantees     run the fault-injection tests and write docs/guarantees.md with their counts"

# Without a GPU, take the CPU build of torch first (a plain `pip install torch` pulls a multi-GB CUDA build).
$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
		$(BIN)/pip install -q torch==2.13.0 || echo "no local CPU torch build; pip will choose one"; fi
	$(BIN)/pip install -q -e '.[dev,demo]'
	touch $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider

demo: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 bash benchmarks/demo.sh $(BIN) $(DEMO)

bench: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 bash benchmarks/run_cpu.sh $(BIN)

bench-quality: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/vs_finetune.py --json benchmarks/vs_finetune.json

bench-robustness: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/robustness.py --work bench_out/robustness --json benchmarks/robustness.json

bench-compact: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/bench_compact.py --work bench_out/compact \
		--json benchmarks/results/compact.json

guarantees: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python benchmarks/guarantees.py

clean:
	rm -rf $(DEMO) bench_out
