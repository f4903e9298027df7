# The two commands: `make demo` and `make test`. Each sets up everything on a fresh Debian 12 machine:
# system libraries (apt), a virtual environment in .venv, and the package with its dependencies.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# PortAudio for sounddevice, libGL/GLib for OpenCV, espeak-ng to synthesize the demo's speech;
# PulseAudio (user-mode null sink) + ALSA's pulse plugin: the live microphone tests record through them;
# LLVM's libc++ for TEN VAD's native library (`actstream eval --compare ten`)
SYSTEM_PACKAGES := libportaudio2 libgl1 libglib2.0-0 espeak-ng pulseaudio pulseaudio-utils libasound2-plugins libc++1
DEMO_ARGS ?=
TEST_ARGS ?=

.PHONY: demo test test-slow setup clean

setup: $(VENV)/.installed

$(VENV)/.system: Makefile
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,cluster]'
	@touch $@

demo: setup
	$(BIN)/actstream demo $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest -q $(TEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(TEST_ARGS)

clean:
	rm -rf $(VENV) demo build *.egg-info
