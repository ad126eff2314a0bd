# `make run` serves the dev server with the demo page; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test migrate token clean bench cluster chaos

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt client-demo/package-lock.json
	@command -v npm >/dev/null || { echo "npm is required (the demo's socket.io-client and the JS tests): install Node.js 20+"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	cd client-demo && npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

# Dev mode: embedded SQLite under data/, a local JWT secret under data/, the demo at /.
run: setup
	CHAT_DEV=1 $(BIN)/chat-server migrate
	CHAT_DEV=1 $(BIN)/chat-server serve

# nginx on 127.0.0.1:8080 in front of two instances (8081, 8082) on the local
# MariaDB (database chat_cluster) and Redis, in dev mode with the demo page.
cluster: setup
	$(BIN)/chat-server cluster

migrate: setup
	CHAT_DEV=1 $(BIN)/chat-server migrate

# make token ID=alice [NAME=Alice]: a dev token for a socket.io client.
token: setup
	@CHAT_DEV=1 $(BIN)/chat-server token $(ID) $(if $(NAME),--name "$(NAME)")

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache client-demo/node_modules client-demo/build

# make bench [BENCH_ARGS="--db sqlite" | "--quick"]: this server beside the stock
# python-socketio relay under the same Node load; prints one table (bench/README.md).
bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# make chaos [CHAOS_ARGS="--only db-freeze,redis-sigstop --seconds 3"]: each network fault
# between two instances and MariaDB or Redis, under load; one table (README, Reliability).
chaos: setup
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)
