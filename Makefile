# The README's two commands live here: `make demo` and `make test`. Both install what they
# need (Debian packages), configure and build first.
BUILD ?= build
JOBS ?= $(shell nproc)
CORPUS ?= /usr/share/games/fortunes
DEMO_DIR ?= runs/quickstart
# Extra config overrides for the demo run, e.g. make demo DEMO_ARGS=data.tokenizer=gpt2
DEMO_ARGS ?=

.PHONY: deps configure build test test-all demo bench clean

deps:
	./scripts/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# Every test, the few labelled "slow" included.
test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Quick inner loop: everything but the slow tests.
test-fast: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -LE slow

demo: build
	./scripts/demo.sh $(BUILD)/kiln $(CORPUS) $(DEMO_DIR) $(DEMO_ARGS)

bench: build
	KILN_WITH_TORCH=1 ./scripts/install-deps.sh
	./bench/train_vs_pytorch.sh $(BUILD)

clean:
	rm -rf $(BUILD)
