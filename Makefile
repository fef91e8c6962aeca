# callout: build, run and test. Needs only Go; every tool is installed into
# ./bin at a pinned version through `go install`.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

NATS_SERVER_VERSION := v2.15.2
STATICCHECK_VERSION := v0.8.2
NATSCLI_VERSION := v0.5.1
BIN := $(CURDIR)/bin
# One Go module: shared below services below tools and e2e.
DIRS := shared services tools e2e
SERVICES := prober cachekeeper ingest console
# Count-based by default: a duration (FUZZTIME=10m) goes through Go 1.26's
# fuzz coordinator deadline race (golang/go#75804), which the loop below
# tells apart from a real failure by the reproducer a real one writes.
FUZZTIME ?= 100000x
# Fuzz targets, package:target: every func Fuzz* in a test file, so that a
# new target is fuzzed without being listed here.
FUZZ_TARGETS := $(shell grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' shared services tools | \
	sed -E 's#^(.+)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]*)$$#./\1/:\2#' | sort)
export GOFLAGS := -buildvcs=false

.PHONY: all build run test vet staticcheck unit e2e fuzz bench clean tools deploy-check soak screenshots docs regions-auth

all: build

$(BIN)/nats-server:
	GOBIN=$(BIN) go install github.com/nats-io/nats-server/v2@$(NATS_SERVER_VERSION)

$(BIN)/staticcheck:
	GOBIN=$(BIN) go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

# The standard nats CLI, to check what the README tells operators to type.
$(BIN)/nats:
	GOBIN=$(BIN) go install github.com/nats-io/natscli/nats@$(NATSCLI_VERSION)

tools: $(BIN)/nats-server $(BIN)/staticcheck $(BIN)/nats

build:
	@mkdir -p $(BIN)
	for s in $(SERVICES); do go build -o $(BIN)/$$s ./services/$$s/cmd/$$s; done
	go build -o $(BIN)/calloutctl ./tools/calloutctl
	go build -o $(BIN)/devrun ./tools/devrun

## run: everything on loopback with a demo destination; Ctrl-C stops it. Installs the nats CLI into ./bin too.
run: build $(BIN)/nats-server $(BIN)/nats
	$(BIN)/devrun -bin $(BIN) -dir ./var

## test: gofmt and vet, staticcheck, unit tests with -race, the e2e suite, every fuzz target (FUZZTIME each), the deployment files.
test: vet staticcheck unit e2e fuzz deploy-check

vet:
	unformatted=$$(gofmt -l $(DIRS)); if [ -n "$$unformatted" ]; then echo "not gofmt-formatted: $$unformatted"; exit 1; fi
	go vet ./...

staticcheck: $(BIN)/staticcheck
	$(BIN)/staticcheck ./...

unit:
	go test -race -count=1 -timeout 15m $$(go list ./... | grep -v '/e2e')

e2e: build $(BIN)/nats-server $(BIN)/nats
	CALLOUT_BIN=$(BIN) go test -count=1 -timeout 12m $(if $(RUN),-run '$(RUN)' -v,) ./e2e/...

## fuzz: every fuzz target for FUZZTIME (make fuzz FUZZTIME=10m for a long run).
fuzz:
	for t in $(FUZZ_TARGETS); do \
		IFS=: read -r pkg name <<< "$$t"; \
		echo "fuzz $$pkg $$name"; \
		dir=$$pkg/testdata/fuzz/$$name; before=$$( (ls $$dir 2>/dev/null || true) | wc -l); \
		if ! go test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1s $$pkg; then \
			if [ "$$( (ls $$dir 2>/dev/null || true) | wc -l)" != "$$before" ]; then echo "failing input written to $$dir"; exit 1; fi; \
			echo "no failing input written: the fuzz coordinator's deadline race (golang/go#75804), not a finding"; \
		fi; \
	done

## docs: render the generated parts of docs/ (settings tables, the reason table); a unit test fails when they are stale.
docs:
	go run ./tools/docgen -docs docs

## regions-auth: the NATS users of a fleet over regions, from deploy/nats/auth.conf.
regions-auth:
	go run ./tools/regionauth -regions a,b,c > deploy/nats/regions/auth.conf

## screenshots: the console's screenshots in docs/ (the browser test takes them; other test runs write them to a temporary directory).
screenshots: build $(BIN)/nats-server
	CALLOUT_BIN=$(BIN) CALLOUT_SCREENSHOTS=$(CURDIR)/docs go test -count=1 -run '^TestConsole(Tenant)?Browser$$' ./e2e/...

## soak: long randomized runs: SOAK_HISTORIES fresh cache-protocol histories (seed from the clock, or SOAK_SEED), a failing one shrunk to a minimal one; and the regions scenario with a cut region mended and waited for.
SOAK_HISTORIES ?= 200
SOAK_SEED ?=
soak: build $(BIN)/nats-server $(BIN)/nats
	CALLOUT_HISTORIES=$(SOAK_HISTORIES) CALLOUT_HISTORY_SEED=$(SOAK_SEED) go test -race -count=1 -timeout 0 -run '^TestHistorySoak$$' ./services/ingest/ingest/
	CALLOUT_REGIONS_MEND=1 CALLOUT_BIN=$(BIN) go test -count=1 -timeout 20m -run '^TestRegion(s|CutOff)$$' ./e2e/

## deploy-check: systemd units (systemd-analyze verify) and alert rules (promtool check rules).
deploy-check: build $(BIN)/nats-server
	bash deploy/check.sh $(BIN)

## bench: the performance figures (table on stdout, JSON in bench/results.json).
bench: build $(BIN)/nats-server
	@mkdir -p bench
	CALLOUT_BIN=$(BIN) go run ./e2e/cmd/bench -out bench/results.json

clean:
	rm -rf $(BIN) ./var
