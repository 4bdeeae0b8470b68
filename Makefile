# Every set-up step a fresh machine needs; the README's commands call these targets.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install data browser lint test test-fast demo bench clean

install: $(BIN)/imgclf

$(BIN)/imgclf: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,export,serve]'
	touch $@

# Fashion-MNIST: Debian's package where we have apt and root, else imgclf's own download.
data: install
	@if [ -f $(FMNIST) ]; then echo "Fashion-MNIST: $(dir $(FMNIST))"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)); \
	else $(BIN)/imgclf data fetch fashion-mnist; fi

# Debian's Chromium and its driver, for the browser test of report.html.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "Chromium: $$(command -v chromium)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q chromium chromium-driver || (apt-get update -q && apt-get install -y -q chromium chromium-driver)); \
	else echo "Chromium is missing: install chromium and chromedriver for the browser test"; fi

# ruff's checks and its formatting, and mypy (all configured in pyproject.toml), on the package: style and
# types never wait for a review.
lint: install
	$(BIN)/ruff check src
	$(BIN)/ruff format --check src
	$(BIN)/mypy

test: install data browser lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The lane a developer runs while working: every test but those marked slow (they train for more than a
# few seconds or start processes); `make test` (CI) runs them all.
test-fast: install data browser lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

demo: install data
	$(BIN)/imgclf train fashion-mnist --name fashion-mnist-demo --force

bench: install data
	$(BIN)/python benchmarks/data_pipeline.py
	$(BIN)/python benchmarks/default_model.py
	$(BIN)/python benchmarks/train_fashion_mnist.py
	$(BIN)/python benchmarks/predict.py
	$(BIN)/python benchmarks/audit.py
	$(BIN)/python benchmarks/small_data.py
	$(BIN)/python benchmarks/time_to_accuracy.py
	$(BIN)/python benchmarks/distributed.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/photo_speed.py
	$(BIN)/pip install --quiet fastai  # the transfer benchmark's fastai contender; not a dependency of imgclf
	$(BIN)/python benchmarks/transfer.py --per-class 50 --one-seed fastai,emoji:tutorial

clean:
	rm -rf $(VENV) src/*.egg-info .pytest_cache
