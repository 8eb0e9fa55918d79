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

.PHONY: help setup synth test snapshots lint format dist cold-start sizing bench bootstrap diff deploy destroy pipeline-synth deploy-pipeline clean

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

.venv-checkov/.installed: requirements-checkov.txt
	python3 -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed .venv-checkov/.installed node_modules/.installed ## Install Python packages (.venv, .venv-checkov), the CDK CLI, Node.js 22 and schemas (node_modules)

synth: setup ## Synthesize one stage's cloud assembly into cdk.out (STAGE=dev)
	$(CDK) synth --quiet -c stage=$(STAGE)
	@echo "cdk.out/ holds stage '$(STAGE)': $$(ls cdk.out/assembly-$(STAGE)/*.template.json | xargs -n1 basename | tr '\n' ' ')"

test: setup lint ## Lint, then run the whole test suite
	pytest

snapshots: setup ## Rewrite the template and manifest snapshots after a deliberate change; review the diff
	pytest tests/test_snapshots.py --snapshot-update

lint: setup ## Check formatting and lint rules (ruff)
	ruff format --check .
	ruff check .

format: setup ## Format and fix what ruff can
	ruff format .
	ruff check --fix .

dist: setup ## Write every chart of one stage as YAML under dist/ (STAGE=dev)
	python -m charts --stage $(STAGE) --outdir dist

cold-start: setup ## The cold-start budget of a new replica of each model (STAGE=dev)
	python -m scripts.cold_start --stage $(STAGE)

sizing: setup ## The GPU instances that can run each model, cheapest first, and the pool's limits (STAGE=dev)
	python -m scripts.sizing --stage $(STAGE)

bench: setup ## Benchmarks: synth time against a floor app, the test suite's time and memory, the deploy plan
	python -m scripts.bench synth --runs 5
	python -m scripts.bench tests
	$(CDK) synth --quiet -c stage=$(STAGE) > /dev/null
	python -m scripts.bench plan cdk.out/assembly-$(STAGE)

bootstrap: setup ## Prepare the stage's account and region for CDK deployments, once (needs AWS credentials)
	$(CDK) bootstrap -c stage=$(STAGE)

diff: setup ## Compare one stage with what is deployed (needs AWS credentials)
	$(CDK) diff -c stage=$(STAGE) '$(STAGE)/*'

deploy: setup ## Deploy one stage (needs AWS credentials and a bootstrapped account)
	$(CDK) deploy -c stage=$(STAGE) '$(STAGE)/*'

destroy: setup ## Delete one stage's stacks; retained resources stay (see README)
	$(CDK) destroy -c stage=$(STAGE) '$(STAGE)/*'

pipeline-synth: setup ## Synthesize the pipeline stack with every stage it deploys (settings/pipeline.yaml)
	$(CDK) synth --quiet -c pipeline=true

deploy-pipeline: setup ## Deploy the pipeline once; it then updates itself (needs AWS credentials, see README)
	$(CDK) deploy -c pipeline=true GpuInferencePipeline

clean: ## Remove build output (cdk.out, dist)
	rm -rf cdk.out dist
