# The two commands of the README: `make serve` and `make test`. Both install what is missing first.
#   make build   configure and build (Release) into build/
#   make test    build, then run the whole suite with ctest
#   make bench   build, then run `kvasir bench engine` on the default model
#   make serve   build, then start a local cluster on 127.0.0.1:8000
#   make asan    build and test under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)
#   make format  clang-format every C++ file
JOBS ?= $(shell nproc)
BUILD ?= build
CTEST_ARGS ?=

.PHONY: all deps build test bench serve asan format clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	@cmake --preset release >/dev/null
	@cmake --build --preset release -j $(JOBS)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

bench: build
	@$(BUILD)/bin/kvasir bench engine

serve: build
	@$(BUILD)/bin/kvasir up --model default --host 127.0.0.1 --port 8000

asan: deps
	@cmake --preset asan >/dev/null
	@cmake --build --preset asan -j $(JOBS)
	@cd build-asan && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

format:
	@git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format -i

clean:
	rm -rf build build-asan
