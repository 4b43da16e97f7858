# Two entry points do all set-up on a fresh machine:
#   make demo   creates .venv, installs the package, runs the main job on the embedded default
#   make test   creates .venv, installs the package with test extras, runs the test suite
# Both also create .venv/triton-env, the Triton server's own environment (see serving-env.txt).
# Every install goes through constraints.txt so torch stays the local CPU build (2.13.0).

# The two environments are independent: install them side by side (two jobs unless -j is given).
ifeq ($(filter -j%,$(MAKEFLAGS)),)
MAKEFLAGS += -j2
endif

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= train,export,serve,test,openvino
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# The Triton server (bundled in nvidia-pytriton) and the environment its Python backend runs in.
TRITON_ENV := $(VENV)/triton-env
TRITON_STAMP := $(TRITON_ENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast install triton-env clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

$(TRITON_STAMP): serving-env.txt
	test -x $(TRITON_ENV)/bin/python || $(PYTHON) -m venv $(TRITON_ENV)
	$(TRITON_ENV)/bin/python -m pip install --quiet -r serving-env.txt
	touch $@

triton-env: $(TRITON_STAMP)

install: $(STAMP) $(TRITON_STAMP)

demo: $(STAMP) $(TRITON_STAMP)
	$(BIN)/sskd-deploy run

test: $(STAMP) $(TRITON_STAMP)
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test-fast: $(STAMP) $(TRITON_STAMP)
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs data/synth .pytest_cache
