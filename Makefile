# The README's two commands live here: `make demo` and `make test`. Both install what they
# need (Debian packages), configure and build first.
BUILD ?= build
JOBS ?= $(shell nproc)
CORPUS ?= /usr/share/games/fortunes
DEMO_DIR ?= runs/quickstart
# Extra config overrides for the demo run, e.g. make demo DEMO_ARGS=data.tokenizer=gpt2
DEMO_ARGS ?=

.PHONY: deps configure build build-kiln test test-fast demo flan rlhf scaling bench clean

deps:
	./scripts/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# The kiln binary alone (what the demo needs; the tests and the CUDA emulator are not built).
build-kiln: configure
	cmake --build $(BUILD) -j $(JOBS) --target kiln

# Every test, the few labelled "slow" included.
test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Quick inner loop: everything but the slow tests.
test-fast: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -LE slow

demo: build-kiln
	./scripts/demo.sh $(BUILD)/kiln $(CORPUS) $(DEMO_DIR) $(DEMO_ARGS)

# FLAN's held-out-cluster experiment in miniature (docs/evaluation.md): pretrain, tune with one
# cluster held out over 3 seeds, score zero- and few-shot; about 17 minutes on 2 cores.
flan: build-kiln
	KILN_WITH_PLOT=1 ./scripts/install-deps.sh
	./scripts/flan-experiment $(BUILD)/kiln runs/flan

# Preference tuning in miniature (docs/rlhf.md): SFT, a reward model, PPO and DPO over 3 seeds,
# and the negative control (a length-ranked reward model with the KL penalty off and on).
rlhf: build-kiln
	KILN_WITH_PLOT=1 ./scripts/install-deps.sh
	./scripts/rlhf-experiment $(BUILD)/kiln runs/rlhf

# Scaling laws in miniature (docs/scaling.md): sweeps of 6 sizes x 3 compute budgets and 5 x 3 token budgets, the fits,
# in-context probes of every run, and the planned run at 10x the largest budget against its prediction;
# about 45 minutes on 2 cores.
scaling: build-kiln
	KILN_WITH_PLOT=1 ./scripts/install-deps.sh
	./scripts/scaling-experiment $(BUILD)/kiln

bench: configure
	KILN_WITH_TORCH=1 ./scripts/install-deps.sh
	cmake --build $(BUILD) -j $(JOBS) --target train_step
	./bench/train_vs_pytorch.sh $(BUILD)

clean:
	rm -rf $(BUILD)
