# MedLedger: `make demo` builds in release mode and runs the demo; `make test` runs the tests.
# Both install liblmdb-dev and libssl-dev first when they are missing.
.PHONY: deps build demo test bench

deps:
	@bash scripts/install-deps.sh

build: deps
	swift build -c release

demo: build
	bash scripts/demo.sh $(DIR)

test: deps
	swift test

bench: deps
	cd Benchmarks && swift package --allow-writing-to-package-directory benchmark --no-progress
