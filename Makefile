.PHONY: run test lint fmt bench docs services setup clean

run:        ## run two pods with the embedded broker: http://localhost:8080 and :8081
	@scripts/setup.sh
	.venv/bin/clarion dev --pods 2

test:       ## the whole suite (sets up .venv, RabbitMQ, helm, Chromium, Prometheus)
	@scripts/test.sh

lint:
	@scripts/setup.sh dev
	.venv/bin/ruff check service operator tests bench clients/python
	.venv/bin/ruff format --check service operator tests bench clients/python
	.venv/bin/mypy

fmt:
	.venv/bin/ruff format service operator tests bench clients/python
	.venv/bin/ruff check --fix service operator tests bench clients/python

services:
	@scripts/services.sh

bench:      ## the benchmark (not part of the tests); see bench/README.md
	@scripts/setup.sh dev,bench
	.venv/bin/python -m bench

docs:       ## the docs site from docs/ (mkdocs.yml), served at http://127.0.0.1:8000
	@scripts/setup.sh dev
	.venv/bin/mkdocs serve

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache
