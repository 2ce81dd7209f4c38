# The two commands of the README, plus the pieces they are made of.
SHELL := /bin/bash
VENV ?= .venv
RSCF := $(VENV)/bin/rscf

.PHONY: demo test install up down status

## Set up what is missing, start the stack, the pipeline job and the worker pools, run the sample prompts.
demo: install
	$(RSCF) demo

## Install everything, start the stack, run unit, integration and end-to-end tests.
test: install
	$(RSCF) up
	$(VENV)/bin/python -m pytest tests/unit tests/integration tests/e2e --timeout=900 -p no:cacheprovider

install:
	bash deploy/local/install.sh

up: install
	$(RSCF) up

down:
	$(RSCF) down

status:
	$(RSCF) status
