# The two commands of the README: `make serve` and `make test`. Both build .venv/ first.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,uvloop]'
	touch $(STAMP)

.PHONY: venv serve test lint bench
venv: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/sip-to-ai serve

# sipp (Debian sip-tester) is the real SIP peer of the tests; installed when missing (needs root).
test: $(STAMP)
	@command -v sipp >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester >/dev/null; } || echo "warning: sipp not installed; its tests will be skipped"
	@command -v kamailio >/dev/null || [ -x /usr/sbin/kamailio ] || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kamailio >/dev/null; } || echo "warning: kamailio not installed; dialplan/kamailio.cfg's test will be skipped"
	$(VENV)/bin/ruff check bridge tests
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check bridge tests

bench: $(STAMP)
	$(VENV)/bin/python -m bridge.bench all
