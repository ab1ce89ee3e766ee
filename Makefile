# shardnet — the two setup commands are `make demo` and `make test` (see README.md).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
APT_PKGS := zookeeper iproute2 iputils-ping ethtool netcat-openbsd tcpdump

.PHONY: venv sysdeps demo test test-fast fuzz lint bench bench-peer bench-overload soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests use: ZooKeeper (started by the test fixtures on loopback), iproute2, ping, ethtool, nc.
sysdeps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: venv
	$(BIN)/shardnet trace --demo
	$(BIN)/shardnet run --store memory:// --demo --duration 5

test: venv sysdeps
	$(BIN)/pytest tests

test-fast: venv
	$(BIN)/pytest tests/unit tests/scenario tests/fuzz

# The property suites with many more examples (the hypothesis profile "fuzz", tests/conftest.py); minutes.
fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/fuzz -o timeout=3600 --hypothesis-show-statistics

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/pytest bench --benchmark-enable --benchmark-only -p no:cacheprovider

# Wire to wire, shardnet vs Open vSwitch (bench/RESULTS.md): installs the Debian package openvswitch-switch if
# missing (it starts nothing by itself; the bench runs a private instance under a temp dir and stops it), then
# runs each pipeline of BENCH_PEER_PIPELINES through both (JSON and PNG in .benchmarks/).  Root; minutes; not part
# of `make test`.
BENCH_PEER_PIPELINES ?= l2 ct
BENCH_PEER_ARGS ?=
bench-peer: venv sysdeps
	@dpkg -s openvswitch-switch >/dev/null 2>&1 || { echo "installing Debian package: openvswitch-switch"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openvswitch-switch >/dev/null; }
	@for p in $(BENCH_PEER_PIPELINES); do \
	  mkdir -p .benchmarks && $(BIN)/shardnet bench --datapath real --pipeline $$p --peer ovs --json .benchmarks/peer-$$p.json \
	    --plot .benchmarks/peer-$$p.png $(BENCH_PEER_ARGS) || exit 1; \
	done

# Overload and soak with the real datapath (bench/RESULTS.md, issue 11 item 6): 10x the sustained new-flow rate
# for OVERLOAD_S seconds on the ct pipeline (RSS per process against its ceiling, drops by reason, the cached
# flows' delivered rate under load vs unloaded), and SOAK_S seconds of mixed traffic (RSS and open fds every
# 10 s, flatness).  Root; bounded (timeout); JSON in .benchmarks/; not part of `make test`.
OVERLOAD_S ?= 30
SOAK_S ?= 600
OVERLOAD_ARGS ?=
bench-overload: venv sysdeps
	mkdir -p .benchmarks && timeout $$(( $(OVERLOAD_S) + 300 )) $(BIN)/shardnet bench --datapath real --overload \
	  --duration $(OVERLOAD_S) --json .benchmarks/overload.json $(OVERLOAD_ARGS)

soak: venv sysdeps
	mkdir -p .benchmarks && timeout $$(( $(SOAK_S) + 300 )) $(BIN)/shardnet bench --datapath real --soak \
	  --duration $(SOAK_S) --json .benchmarks/soak.json $(OVERLOAD_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks
