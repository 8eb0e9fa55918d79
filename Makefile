# The project's commands. Each target installs what it needs first, so a fresh clone
# reaches a synthesized stage with `make synth` and a green suite with `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

STAGE ?= dev
VENV := .venv
# node_modules/.bin holds the pinned CDK CLI and a Node.js that jsii supports (22):
# first on PATH, it serves both the CLI and the jsii runtime inside the Python app.
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)
# The CLI would otherwise try to reach its telemetry and notice endpoints on every call.
export CDK_DISABLE_CLI_TELEMETRY := true
CDK := cdk --no-notices

.PHONY: help setup setup-synth setup-plan lock docs preflight e2e synth test snapshots lint format dist cold-start sizing cost cost-report pin-images prices model-facts vllm-profile bench bootstrap diff plan deploy split-serving destroy pipeline-synth deploy-pipeline clean

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# Every Python package comes from a lock (lock/*.txt: exact versions with hashes, written by
# `make lock` from the requirements*.txt files). uv installs it when it can be had, pip when
# not: either takes exactly the lock's lines (--no-deps, --require-hashes), so the set is the same.
# Both write the bytecode at install time (pip does by default; uv with --compile-bytecode): where
# PYTHONDONTWRITEBYTECODE is set, every Python process would otherwise compile aws-cdk-lib again.
install_lock = if [ -x $(VENV)/bin/uv ]; then \
		$(VENV)/bin/uv pip install --quiet --python $(1)/bin/python --require-hashes --no-deps --compile-bytecode -r $(2); \
	else \
		$(1)/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r $(2); \
	fi

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r lock/uv.txt \
		|| echo "uv is not to be had here: pip installs the locks instead"

# What synth needs; the test tools come with `make test`.
$(VENV)/.synth: lock/synth.txt | $(VENV)/bin/python
	$(call install_lock,$(VENV),lock/synth.txt)
	touch $@

$(VENV)/.dev: lock/dev.txt | $(VENV)/bin/python
	$(call install_lock,$(VENV),lock/dev.txt)
	touch $@

.venv-checkov/.installed: lock/checkov.txt | $(VENV)/bin/python
	python3 -m venv .venv-checkov
	$(call install_lock,.venv-checkov,lock/checkov.txt)
	touch $@

# huggingface_hub 1.x for the import tests' second run (requirements-hub1.txt), beside the project's 0.x.
.hub1/.installed: lock/hub1.txt | $(VENV)/bin/python
	rm -rf .hub1
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps --target .hub1 -r lock/hub1.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup-synth: $(VENV)/.synth node_modules/.installed

setup-plan: $(VENV)/.dev ## Install what `make plan` needs and no more (the pipeline's Plan step)

setup: setup-synth $(VENV)/.dev .venv-checkov/.installed .hub1/.installed ## Install everything: Python packages from lock/ (.venv, .venv-checkov, .hub1), the CDK CLI, Node.js 22 and schemas (node_modules)

lock: $(VENV)/bin/python ## Rewrite lock/*.txt from the requirements*.txt pins, after changing one (needs uv)
	$(eval COMPILE := $(VENV)/bin/uv pip compile --universal --python-version 3.11 --generate-hashes --quiet --custom-compile-command 'make lock')
	$(COMPILE) requirements-dev.txt -o lock/dev.txt
	$(COMPILE) requirements.txt -c lock/dev.txt -o lock/synth.txt
	$(COMPILE) requirements-checkov.txt -o lock/checkov.txt
	$(COMPILE) requirements-hub1.txt -o lock/hub1.txt
	$(COMPILE) requirements-uv.txt -o lock/uv.txt

synth: setup-synth ## Synthesize one stage's cloud assembly into cdk.out (STAGE=dev)
	$(CDK) synth --quiet -c stage=$(STAGE)
	@echo "cdk.out/ holds stage '$(STAGE)': $$(ls cdk.out/assembly-$(STAGE)/*.template.json | xargs -n1 basename | tr '\n' ' ')"

test: setup lint ## Lint, then run the whole test suite
	pytest

snapshots: setup ## Rewrite the template and manifest snapshots after a deliberate change; review the diff
	pytest tests/test_snapshots.py --snapshot-update

docs: setup ## Write docs/settings.md from the settings schema (a test fails when it is out of date)
	python -m tools.settings_reference

lint: setup ## Check formatting, lint rules (ruff) and types (mypy)
	ruff format --check .
	ruff check .
	mypy

format: setup ## Format and fix what ruff can
	ruff format .
	ruff check --fix .

dist: setup-synth ## Write every chart of one stage as YAML under dist/ (STAGE=dev)
	python -m charts --stage $(STAGE) --outdir dist

cold-start: setup-synth ## The cold-start budget of a new replica of each model (STAGE=dev)
	python -m commands.cold_start_budget --stage $(STAGE)

sizing: setup-synth ## The GPU instances that can run each model, cheapest first, and the pool's limits (STAGE=dev)
	python -m commands.sizing_table --stage $(STAGE)

cost: setup-synth ## A stage's monthly cost per component at its region's prices, each price with its source (STAGE=dev)
	python -m commands.monthly_cost --stage $(STAGE)

pin-images: setup-synth ## Pin each model image of a stage to the digest its tag names now, in its settings file (STAGE=prod [REFRESH=1]; the internet, no AWS credentials)
	python -m commands.pin_images --stage $(STAGE) $(if $(REFRESH),--refresh)

cost-report: setup ## What each model of a running stage cost a day in GPU nodes, from Container Insights (STAGE=prod DAYS=7; AWS credentials)
	python -m commands.model_cost_report --stage $(STAGE) --days $(or $(DAYS),7)

prices: setup ## Rewrite settings/catalog/service_prices.yaml from the AWS Price List, every region of the catalog (AWS credentials)
	python -m tools.service_prices

model-facts: setup ## Read a model's architecture from the Hub into settings/catalog/models.yaml (MODEL=<repo> REVISION=<commit>; HF_TOKEN for gated ones)
	@test -n "$(MODEL)" -a -n "$(REVISION)" || { echo "usage: make model-facts MODEL=<hub repo> REVISION=<commit>"; exit 2; }
	python -m commands.model_facts_from_hub --model $(MODEL) --revision $(REVISION)

vllm-profile: setup ## Read a vLLM release's flags, variables, metrics and CUDA from its wheel into settings/catalog/vllm/ (VERSION=x.y.z [WHEEL=path])
	@test -n "$(VERSION)" || { echo "usage: make vllm-profile VERSION=<x.y.z> [WHEEL=<downloaded wheel>]"; exit 2; }
	python -m tools.vllm_profile --version $(VERSION) $(if $(WHEEL),--wheel $(WHEEL))

bench: setup ## Benchmarks: set-up from a fresh clone, synth time against a floor app, the test suite's time and memory, the deploy plan
	python -m tools.bench setup
	python -m tools.bench synth --runs 5
	python -m tools.bench tests
	python -m tools.bench scale --stage prod --models 30
	$(CDK) synth --quiet -c stage=$(STAGE) > /dev/null
	python -m tools.bench plan cdk.out/assembly-$(STAGE)

bootstrap: setup-synth ## Prepare the stage's account and region for CDK deployments, once (needs AWS credentials)
	$(CDK) bootstrap -c stage=$(STAGE)

diff: setup-synth ## Compare one stage with what is deployed (needs AWS credentials)
	$(CDK) diff -c stage=$(STAGE) '$(STAGE)/*'

plan: setup ## What a deploy of the stage will do to it, in words: replacements, removals, drift, rolls (offline against deployed/<stage>, or FROM_AWS=1)
	$(CDK) synth --quiet -c stage=$(STAGE)
	python -m commands.plan --stage $(STAGE) $(if $(FROM_AWS),--from-aws,)

# Deploys the assembly it planned; --concurrency: stacks whose dependencies are met deploy side by side (CDK CLI,
# cdk deploy).
deploy: setup-plan setup-synth ## Deploy one stage (needs AWS credentials and a bootstrapped account): the assembly it planned, stopping at a change the plan refuses (FORCE=1 deploys anyway); saves it for the next `make plan`
	$(CDK) synth --quiet -c stage=$(STAGE)
	$(if $(FORCE),,python -m commands.plan --stage $(STAGE) --gate)
	$(CDK) deploy --app cdk.out --concurrency 4 '$(STAGE)/*'
	python -m commands.plan --stage $(STAGE) --delete-removed
	python -m commands.plan --stage $(STAGE) --save cdk.out/assembly-$(STAGE)

split-serving: setup-plan setup-synth ## Once, before a stage deployed with its models in the serving stack first deploys with a stack per model (needs AWS credentials)
	$(CDK) synth --quiet -c stage=$(STAGE)
	python -m commands.split_serving --stage $(STAGE)

destroy: setup-synth ## Delete one stage: load balancers, volumes and nodes first, then its stacks; lists what it keeps (needs AWS credentials)
	python -m commands.teardown --stage $(STAGE)

preflight: setup-synth ## Before a deploy: can the stage get its GPUs? Quotas, offerings in its zones, reservations (read-only; AWS credentials)
	python -m commands.preflight --stage $(STAGE)

e2e: setup ## Deploy a throwaway stage, prove it serves, measure cold start and latency, remove it all (AWS credentials; never in CI; GATEWAY=1 [ADAPTER=REPO@COMMIT:RANK] through the gateway; LEVERS=1 with every cold-start lever)
	python -m commands.e2e $(if $(GATEWAY),--gateway) $(if $(ADAPTER),--adapter $(ADAPTER)) $(if $(LEVERS),--levers)

pipeline-synth: setup-synth ## Synthesize the pipeline stack with every stage it deploys (settings/pipeline.yaml)
	$(CDK) synth --quiet -c pipeline=true

deploy-pipeline: setup-synth ## Deploy the pipeline once; it then updates itself (needs AWS credentials, see README)
	$(CDK) deploy -c pipeline=true GpuInferencePipeline

clean: ## Remove build output (cdk.out, dist)
	rm -rf cdk.out dist
