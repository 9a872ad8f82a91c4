# The two commands of the README: `make serve` and `make test`. Both install what is missing first.
#   make build   configure and build (Release) into build/
#   make test    build, then run the whole suite with ctest
#   make bench   build, then run `kvasir bench engine` on the default model
#   make serve   build, then start a local cluster on 127.0.0.1:8000 (coordinator, cachestore,
#                one prefill and one decode worker)
#   make asan    build and test under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)
#   make fuzz-smoke  build, then replay every fuzz target's committed seeds (ctest -L fuzz)
#   make fuzz    configure and build the libFuzzer targets (clang, build-fuzz/fuzz/; HACKING.md)
#   make tsan    TSan build (build-tsan/, absl from scripts/build-absl-tsan.sh) and the concurrent
#                tests under it: transport, cachestore, worker service, coordinator, integration
#   make format  clang-format every C++ file
#   make retrofit-smoke  the retrofit training tests (train/tests), a few training steps on
#                stories260K included; skipped when torch is not installed (install-deps.sh --train)
JOBS ?= $(shell nproc)
BUILD ?= build
CTEST_ARGS ?=

.PHONY: all deps build test bench serve asan fuzz-smoke fuzz tsan format clean retrofit-smoke

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
	@$(BUILD)/bin/kvasir up --model default --host 127.0.0.1 --port 8000 --prefill-workers 1 --decode-workers 1

asan: deps
	@cmake --preset asan >/dev/null
	@cmake --build --preset asan -j $(JOBS)
	@cd build-asan && ctest --output-on-failure -j $(JOBS) $(CTEST_ARGS)

fuzz-smoke: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -L fuzz $(CTEST_ARGS)

fuzz: deps
	@cmake --preset fuzz >/dev/null
	@cmake --build --preset fuzz -j $(JOBS)

# The test binaries (labels) of the concurrent parts; each one is also a build target.
TSAN_TESTS ?= kvasir_transport_tests kvasir_transport_mp_tests kvasir_cachestore_tests \
	kvasir_cachestore_mp_tests kvasir_worker_service_tests kvasir_coordinator_tests \
	kvasir_integration_tests
# UCX_MEM_EVENTS=no: UCX's libucm hooks madvise and crashes TSan threads as they exit.
TSAN_ENV ?= UCX_MEM_EVENTS=no \
	TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 suppressions=$(CURDIR)/tests/tsan.supp $(TSAN_OPTIONS)"

tsan: deps
	@scripts/build-absl-tsan.sh
	@cmake --preset tsan >/dev/null
	@cmake --build --preset tsan -j $(JOBS) --target $(TSAN_TESTS)
	@cd build-tsan && $(TSAN_ENV) ctest --output-on-failure -j $(JOBS) \
		-L '^($(subst $(eval) ,|,$(strip $(TSAN_TESTS))))$$' $(CTEST_ARGS)

format:
	@git ls-files '*.h' '*.cc' '*.cu' '*.cuh' | xargs clang-format -i

clean:
	rm -rf build build-asan build-fuzz build-tsan

# The Python that has the training tools: .deps/train-venv (install-deps.sh --train), else python3.
TRAIN_PY ?= $(shell [ -x .deps/train-venv/bin/python ] && echo .deps/train-venv/bin/python || echo python3)

retrofit-smoke:
	@if $(TRAIN_PY) -c 'import torch, gguf, safetensors' 2>/dev/null; then \
		$(TRAIN_PY) train/tests/test_retrofit.py -v; \
	else \
		echo "retrofit-smoke: skipped: torch, gguf and safetensors are not installed (scripts/install-deps.sh --train)"; \
	fi
