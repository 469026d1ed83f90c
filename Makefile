# tokenagent: the two newcomer commands are `make demo` and `make test`.
# Both install what they need first (Debian packages, then a virtualenv).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Debian 12 packages the tool and its tests use:
#   softhsm2          the test token (libsofthsm2.so, softhsm2-util)
#   opensc            pkcs11-tool (independent listings), opensc-pkcs11 (smart cards), pkcs11-spy.so
#   gnutls-bin        p11tool (second independent listing)
#   pcscd, swig, libpcsclite-dev, gcc, python3-dev   PC/SC daemon and what pyscard needs to build
#   libengine-pkcs11-openssl   OpenSSL engine to use token keys by pkcs11: URI
#   openssl, python3-venv, make, p11-kit
#   libkrb5-dev       what python-gssapi and krb5 (pyspnego[kerberos]: Negotiate to AD CS) build against
#   krb5-kdc, krb5-admin-server, krb5-user   a real KDC and kinit for the Kerberos tests
#   jq                the JSON examples in docs/commands.md (run by tests/test_docs_commands.py)
#   vsmartcard-vpcd   virtual card readers for pcscd (the virtual PIV cards, tests/peers/piv.py)
#   ykcs11            Yubico's PKCS#11 module, driven against those cards
#   libnss3, libnss3-tools   NSS softokn (a second PKCS#11 implementation) and certutil (makes its database)
#   p11-kit-modules   p11-kit-proxy.so: pkcs11-tool reaches NSS through it (it passes the init string)
#   swtpm, libtpm2-pkcs11-1, tpm2-tools   a software TPM with tpm2-pkcs11 in front (the third one;
#                     tpm2-tools flushes what a failed run leaves and checks the TPM's PSS salt)
#   scep, pebble, golang-cfssl   real SCEP, ACME and cfssl CA servers for the CA connector tests
#   pcsc-tools        smartcard_list.txt: tests/test_readers.py checks the ATR table against it
#   sqlite3           the journal read by a tool we did not write (tests/test_station.py)
#   hwdata, libccid   usb.ids and the CCID driver's reader list: tests/test_udev.py checks udev/'s USB IDs against them
#   curl              EST re-enrollment: TLS client authentication with the old key on the token (libp11 engine)
APT_PACKAGES := softhsm2 opensc opensc-pkcs11 gnutls-bin pcscd swig libpcsclite-dev gcc python3-dev \
	libengine-pkcs11-openssl openssl python3-venv make p11-kit libkrb5-dev krb5-kdc krb5-admin-server krb5-user jq \
	vsmartcard-vpcd ykcs11 libnss3 libnss3-tools swtpm libtpm2-pkcs11-1 tpm2-tools p11-kit-modules \
	scep pebble golang-cfssl curl hwdata libccid pcsc-tools sqlite3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt venv peers demo test lint bench clean

setup: apt venv

# Installs only what is missing, so a second run does not touch apt at all.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if [ -n "$(SUDO)" ] && ! command -v sudo >/dev/null; then \
			echo "make: the Debian packages $$missing are missing and installing them needs root:" \
				"run 'make setup' once as root, or install sudo" >&2; exit 1; fi; \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Bytecode for the checkout, so no run pays for compiling tokenagent: an editable install otherwise
# recompiles it at every start where PYTHONDONTWRITEBYTECODE is set (+44% CPU per command, issue 15).
venv: $(VENV)/.installed
	@$(BIN)/python -m compileall -q tokenagent
	@# man pages from the click commands (tokenagent/cli/manpages.py): `man tokenagent-new` in the venv
	@$(BIN)/python -m tokenagent.cli.manpages $(VENV)/share/man/man1 >/dev/null

$(VENV)/.installed: pyproject.toml
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

# The CA servers the demo and the tests run: django-ca + django-ca-cmc in a venv of their own
# (build/peers/djangoca-venv; they need older cryptography than tokenagent). Fast once installed.
peers: venv
	@$(BIN)/python tests/peers/djangoca.py ensure-venv >/dev/null

demo: setup peers
	@bash softhsm/demo.sh

# One line per test file with its dots, and the reason of every skip at the end (-ra in pyproject.toml).
test: setup peers
	$(BIN)/python -m pytest

# ruff (with complexity bounds, pyproject.toml) and mypy on tokenagent/ (configuration in pyproject.toml)
lint: setup
	$(BIN)/ruff check tokenagent tests softhsm
	$(BIN)/ruff format --check tokenagent tests softhsm
	$(BIN)/mypy

# The bench extra (pyinstrument, for the profiles in docs/performance.md) is installed only here.
bench: setup $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks

$(VENV)/.bench-installed: pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	@touch $@

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
