# The two commands a user needs: `make fleet` and `make test`. Everything else is for us.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TOPOLOGY ?= topology/fleet.yaml
ELB ?= http://127.0.0.1:9000
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: accel top report observability-cost fleet server proxy benchmark test check system-deps install regular region concurrent image large signin wrk bench bench-caddy bench-hop bench-hop-profile bench-hop-ab elb-cost idle policies policy-cost chaos soak bench-hosts clean ws ratelimit bench-edge bench-edge-filters bench-routes

BENCH_STAMP := $(VENV)/.bench-installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,fast]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: system-deps $(STAMP) accel

# our hot modules compiled with mypyc (httpio.accel), a no-op when the build is fresh; without a
# C compiler the build fails, says so, and every process runs the pure modules
accel: $(STAMP)
	@mkdir -p build
	@$(PY) -m httpio.accel_build build > build/accel-build.log 2>&1 \
		&& tail -1 build/accel-build.log \
		|| { tail -20 build/accel-build.log; echo "make accel failed (build/accel-build.log): the pure modules will run" >&2; }

# the optional `bench` extra (matplotlib for charts, py-spy for profiles)
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -e '.[dev,fast,bench]'
	@rm -f $(VENV)/.bench-installed-*
	@touch $@

# redis-server, ab (apache2-utils) and wrk from Debian's packages when missing.
system-deps:
	@bash scripts/system-deps.sh

fleet: install
	$(VENV)/bin/fleet $(TOPOLOGY)

# the original's two halves, each in its own terminal (Redis goes with the proxies)
server: install
	$(VENV)/bin/fleet $(TOPOLOGY) --only backends,auth

proxy: install
	$(VENV)/bin/fleet $(TOPOLOGY) --only proxies,elbs

# the original's make benchmark: its own fleet, the script's checks and loads, then stops it
# (ARGS=--free-ports when the default ports are taken)
benchmark: install
	$(PY) -m bench.benchmark --topology $(TOPOLOGY) $(ARGS)

test: install
	PY=$(PY) sh scripts/test-builds.sh

check: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

# the live view of a running fleet (its /metrics, every second), and a summary of a run's access logs
top: $(STAMP)
	$(VENV)/bin/fleet top $(TOPOLOGY)

report: $(STAMP)
	$(VENV)/bin/fleet report $(RUN)

# what the metrics and the access log cost one proxy (bare / metrics / metrics+log, same run)
observability-cost: $(STAMP)
	$(PY) -m bench.observability_cost $(ARGS)

# -- benchmarks against a running fleet (make fleet in another terminal) -------------------------
# the original's request.sh sections: their checks, then their load (ab), on TOPOLOGY's ports
regular concurrent image large signin: $(STAMP)
	$(PY) -m bench.benchmark $@ --topology $(TOPOLOGY)

region: $(STAMP)
	$(PY) -m bench.benchmark regional --topology $(TOPOLOGY)

wrk: $(STAMP)
	$(PY) -m bench.run $@ --elb $(ELB)

bench: $(STAMP)
	$(PY) -m bench.run all --elb $(ELB)

# one proxy hop vs Caddy (GOMAXPROCS=1) in front of the same backend, same run
bench-caddy: $(STAMP)
	$(PY) -m bench.caddy --backend http://127.0.0.1:5002 --path /index.html --proxy-url http://127.0.0.1:6000/video/index.html $(if $(TOKEN),--token $(TOKEN))

# one proxy hop vs nginx, HAProxy and Caddy in front of one fast nginx backend, all started
# here (issue 14); ARGS="--rounds 3 --duration 8" etc., see python -m bench.hop --help
bench-hop: system-deps $(BENCH_STAMP)
	$(PY) -m bench.hop $(ARGS)

# where one proxied request's CPU goes, per layer (py-spy, strace, perf), under bench-hop's wrk
# load; ARGS="--target relay" profiles the reference relay instead
bench-hop-profile: system-deps $(BENCH_STAMP)
	$(PY) -m bench.hop_profile --strace --perf --speedscope $(ARGS)

# CPU per request of our proxy from two source trees, alternating (ARGS="/tmp/base .")
bench-hop-ab: system-deps $(STAMP)
	$(PY) -m bench.hop_ab $(ARGS)

# a fleet over hosts (issue 16): signup/signin rates on SQLite and on PostgreSQL, same run (starts
# its own auth servers and PostgreSQL); the relay vs hand-off part comes with the hosts work
bench-hosts: system-deps $(STAMP)
	$(PY) -m bench.hosts $(ARGS)

# the ELB hop: one proxy of the running fleet, directly and behind a fresh ELB, same run
elb-cost: $(STAMP)
	$(PY) -m bench.elb_cost

# memory of 10,000 idle keep-alive connections on one proxy of the running fleet
idle: $(STAMP)
	$(PY) -m bench.idle --url http://127.0.0.1:6001/video/index.html -n 10000 --token $$($(PY) -c 'from bench.run import acquire_token; print(acquire_token("$(ELB)"))')

# WebSocket echo through a fleet of its own vs straight to its backend, and 10,000 idle
# WebSockets on one proxy (issue 13); ARGS="--duration 5 --connections 100 --idle 10000"
ws: $(STAMP)
	$(PY) -m bench.ws $(ARGS)

# load-balancing policies against a slow instance (starts its own backends and proxies)
policies: $(STAMP)
	$(PY) -m bench.policies

# what the policy layer costs: one proxy per policy in front of one backend, same run
policy-cost: $(STAMP)
	$(PY) -m bench.policies --cost

clean:
	rm -rf $(VENV) run build *.egg-info

# -- fault tolerance (each starts a fleet of its own, in a network namespace when root) ----------
# the fault campaign of issue 9: one row per fault (ARGS="--faults proxy-kill --duration-scale 0.2")
chaos: $(STAMP)
	$(PY) -m bench.chaos $(ARGS)

# RSS and open fds of every process under a steady load, sampled every 30 s (MINUTES=10)
MINUTES ?= 10
soak: $(STAMP)
	$(PY) -m bench.soak --minutes $(MINUTES) $(ARGS)

# -- issue 11's edge filters (no fleet needed: each starts what it measures on free ports) --------
# fleet-wide limit accuracy (4 Redis pools) and the cost of one decision, local and fleet
ratelimit: $(STAMP)
	$(PY) -m bench.ratelimit $(ARGS)

# one proxy, two services on one backend: every edge filter configured, none triggering, vs none
bench-edge: $(STAMP)
	$(PY) -m bench.edge $(ARGS)

# what each of bench-edge's filters costs alone, in process (fleet limit: exact vs leased)
bench-edge-filters: $(STAMP)
	$(PY) -m bench.edge_filters $(ARGS)

# routing cost with 10 and 10,000 explicit routes
bench-routes: $(STAMP)
	$(PY) -m bench.routes $(ARGS)
