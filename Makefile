# stompgate — the two commands a user needs are `make run` and `make test`.
SHELL := /bin/bash
GO ?= go
export EDGE_JWT_HS256_SECRET ?= dev-only-secret-change-me-0123456789abcdef
BIN := bin

.PHONY: run test test-unit services build go-test fuzz js-test e2e bench clean faults soak

## run: prepare RabbitMQ + PostgreSQL, build, start the persister and the edge on :8080
run: services build
	@bash scripts/run.sh

## test: every test against the real local RabbitMQ and PostgreSQL (< 10 min on 2 cores)
test: services go-test fuzz js-test e2e

## test-unit: every test that needs no service (no RabbitMQ, no Postgres, no network:
## passes inside `unshare -n`); integration tests skip themselves under -short
test-unit:
	$(GO) vet ./...
	GOPROXY=off GOFLAGS=-mod=readonly $(GO) test -short -race -count=1 -timeout 5m ./...
	@if command -v node >/dev/null; then $(MAKE) --no-print-directory js-test; else echo "test-unit: node not found, skipping js-test"; fi

services:
	@bash scripts/services.sh

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

go-test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 8m ./...
	# the relay suite again with its edges on shared links (amqplink), as the edge ships
	STOMPGATE_TEST_BROKER=shared $(GO) test -race -count=1 -timeout 3m ./relay/

## fuzz: a short run of each fuzz target on top of its seed corpus
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParser$$' -fuzztime 15s ./stomp
	@for t in FuzzDestinationRoundTrip FuzzUpgradeToken FuzzConnectToken FuzzPermissions; do \
		$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime 10s ./auth || exit 1; \
	done

## js-test: unit tests of the browser helper /client/stompgate.js (Node, no dependencies, offline)
js-test:
	node --test web/js-test/*.test.mjs

e2e: build
	@bash scripts/browser.sh
	@bash scripts/nginx.sh
	cd e2e && npm ci --no-audit --no-fund --loglevel=error && node --test --test-concurrency=1

## faults: every fault scenario of internal/faults (docs/RELIABILITY.md), the long ones included
## (30 s Postgres outage, 2,000-client drain and reconnect storm); not part of CI
faults: services
	STOMPGATE_FAULTS=1 $(GO) test -count=1 -v -timeout 15m ./internal/faults

## soak: 5,000 idle sessions + a chat workload for SOAK_DURATION (default 10m) against a real
## edge and persister; RSS and goroutines every 10 s to docs/soak.csv and docs/soak.png (docs/SOAK.md)
soak: services
	STOMPGATE_SOAK=1 $(GO) test -count=1 -v -run '^TestSoak$$' -timeout 60m ./internal/faults

## bench: long benchmarks, not part of CI (see docs/BENCHMARKS.md)
bench: services build
	$(GO) test -run '^$$' -bench . -benchmem ./relay ./persist
	STOMPGATE_BENCH=1 $(GO) test -run TestResumeReplayTiming -count=1 -v ./relay
	bash scripts/bench.sh

clean:
	rm -rf $(BIN)
