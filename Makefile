# MedLedger: `make demo` builds in release mode and runs the demo; `make test` runs the tests.
# Both install liblmdb-dev and libssl-dev first when they are missing.
.PHONY: deps build demo test bench bench-imaging

deps:
	@bash scripts/install-deps.sh

build: deps
	swift build -c release

demo:
	bash scripts/demo.sh $(DIR)

test:
	bash scripts/test.sh

# The scenario runner. Its release products are removed first: SwiftPM does not always
# rebuild a path dependency's objects after the root package changes, and stale objects
# have crashed runs.
SCALE ?= $(or $(MEDLEDGER_BENCH_SCALE),1M)
bench: deps
	cd Benchmarks && rm -rf .build/release .build/*/release && swift build -c release --product ledger-bench
	mkdir -p Benchmarks/results
	Benchmarks/.build/release/ledger-bench --entries $(SCALE) --json Benchmarks/results/ledger-bench-$(SCALE).json \
		| tee Benchmarks/results/ledger-bench-$(SCALE).md

IMAGING ?= 2GB
bench-imaging: deps
	cd Benchmarks && rm -rf .build/release .build/*/release && swift build -c release --product ledger-bench
	mkdir -p Benchmarks/results
	Benchmarks/.build/release/ledger-bench --entries 10k --entries-4k 0 --keys 0 --queries 1000 \
		--imaging $(IMAGING) --chunk-sizes 256k,64k,1M --json Benchmarks/results/imaging-$(IMAGING).json \
		| tee Benchmarks/results/imaging-$(IMAGING).md
