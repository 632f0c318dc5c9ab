# vpd: see README.md. Every target installs what is missing first (scripts/install-deps.sh).

CARGO ?= cargo
FILTER ?= faces,motion
OUT ?= out

.PHONY: deps rabbitmq build run test lint bench fuzz sample deb clean

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --release --locked

## Process the sample video: make run [FILTER=edges] [OUT=dir]
run: build
	@mkdir -p $(OUT)
	$(CARGO) run --release --locked --quiet -- run assets/sample.mp4 --filter $(FILTER) -o $(OUT)/sample-out.mp4

## A RabbitMQ for the distributed tests: VPD_TEST_AMQP_URL, or a local one started if none answers.
rabbitmq:
	@scripts/ensure-rabbitmq.sh

## The whole test suite (CI runs exactly this): lints, unit and integration tests, docs.
test: deps rabbitmq lint
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --locked --no-fail-fast; \
	else \
		$(CARGO) test --locked --no-fail-fast; \
	fi
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --locked --quiet
	scripts/package-deb.sh

## The Debian package, target/debian/vpd_VERSION_ARCH.deb (lintian-clean); scripts/deb-smoke.sh
## installs it into a clean Debian 12 root.
deb: deps
	scripts/package-deb.sh

lint:
	scripts/check-layers.sh
	$(CARGO) fmt --check
# cargo fmt does not reach the files the filters! macro declares (blur.rs, …): rustfmt checks them.
	rustfmt --edition 2024 --check src/filters/*.rs
	$(CARGO) clippy --locked --all-targets --quiet -- -D warnings

## Criterion benchmarks of each filter and codec, vpd run against ffmpeg, distributed against vpd run,
## a server's memory across jobs per allocator, web uploads and the first chart point, live latency and overload,
## live streams through a server, and 4K frames in tiles.
bench: deps rabbitmq
	$(CARGO) bench --locked --bench filters --bench codecs --bench convert --bench tiles
	scripts/bench-e2e.sh 5 sample 720
	scripts/bench-e2e.sh 5 testsrc2 720
	scripts/bench-e2e.sh 3 sample 1080
	scripts/bench-distributed.sh 3
	scripts/bench-server-memory.sh 24 3
	scripts/bench-web.sh 1024 3
	scripts/bench-live.sh 20 3
	scripts/bench-live-relay.sh 20 3
	scripts/bench-tiles.sh 3

## Fuzz every decoder: FUZZ_CASES mutations of fuzz/corpus/TARGET each (default 10 million), in
## release mode, with inputs per second; a failure is shrunk and saved into the corpus.
FUZZ_CASES ?= 10000000
fuzz: deps
	FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release --locked --test fuzz -- --nocapture --test-threads 1

## Regenerate assets/sample.mp4 from the photos in assets/.
sample: deps
	$(CARGO) run --release --locked --example make_sample

clean:
	$(CARGO) clean
	rm -rf $(OUT)
