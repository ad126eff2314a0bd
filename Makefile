# `make run` serves the dev server with the demo page at / and the Angular app at /app/;
# `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
NPM_CI := npm ci --no-audit --no-fund --loglevel=error

# The client package (client-demo/client), packed into a tarball, and the Angular
# workspace (client-demo/angular) that installs that tarball and builds the app.
CLIENT := client-demo/client
CLIENT_VERSION := $(shell sed -n 's/^  "version": "\(.*\)",$$/\1/p' $(CLIENT)/package.json)
CLIENT_TGZ := $(CLIENT)/dist-pack/chat-server-client-$(CLIENT_VERSION).tgz
NGAPP := client-demo/angular
APP_BUILT := $(NGAPP)/dist/chat-app/browser/index.html

.PHONY: setup run test migrate token clean bench cluster chaos client app

setup: $(STAMP) $(APP_BUILT)

$(STAMP): pyproject.toml constraints.txt client-demo/package-lock.json bench/package-lock.json
	@command -v npm >/dev/null || { echo "npm is required (the demo's socket.io-client and the JS tests): install Node.js 20+"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	cd client-demo && $(NPM_CI)
	cd bench && $(NPM_CI)
	touch $(STAMP)

# make client: build and pack @chat-server/client (the tarball an app installs).
client: $(CLIENT_TGZ)

$(CLIENT)/node_modules/.ci-stamp: $(CLIENT)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is required: install Node.js 20+"; exit 1; }
	cd $(CLIENT) && $(NPM_CI)
	touch $@

$(CLIENT_TGZ): $(CLIENT)/node_modules/.ci-stamp $(CLIENT)/package.json $(CLIENT)/tsconfig.json $(CLIENT)/README.md $(wildcard $(CLIENT)/src/*.ts)
	rm -rf $(CLIENT)/dist $(CLIENT)/dist-pack
	mkdir -p $(CLIENT)/dist-pack
	cd $(CLIENT) && npm pack --pack-destination dist-pack --loglevel=error >/dev/null  # prepack runs tsc

# The Angular workspace: npm ci from its lock, then the packed client from the tarball
# (--no-save: the lock cannot pin a tarball that is rebuilt from source; a copy, not a symlink).
$(NGAPP)/node_modules/.ci-stamp: $(NGAPP)/package-lock.json
	@command -v npm >/dev/null || { echo "npm is required: install Node.js 20+"; exit 1; }
	cd $(NGAPP) && $(NPM_CI)
	touch $@

$(NGAPP)/node_modules/.client-stamp: $(NGAPP)/node_modules/.ci-stamp $(CLIENT_TGZ)
	cd $(NGAPP) && npm install --no-save --no-audit --no-fund --loglevel=error ../client/dist-pack/$(notdir $(CLIENT_TGZ))
	touch $@

# make app: build the Angular app into client-demo/angular/dist (served at /app/).
app: $(APP_BUILT)

$(APP_BUILT): $(NGAPP)/node_modules/.client-stamp $(NGAPP)/angular.json $(wildcard $(NGAPP)/tsconfig*.json) $(shell find $(NGAPP)/src -type f 2>/dev/null)
	cd $(NGAPP) && NG_CLI_ANALYTICS=false node_modules/.bin/ng build
	touch $@

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
	rm -rf $(VENV) data .pytest_cache client-demo/node_modules client-demo/build \
	  $(CLIENT)/node_modules $(CLIENT)/dist $(CLIENT)/dist-pack \
	  $(NGAPP)/node_modules $(NGAPP)/dist $(NGAPP)/.angular

# make bench [BENCH_ARGS="--db sqlite" | "--quick" | "--group"]: this server beside three
# relays (python-socketio at its defaults, the same tuned, Node socket.io 4) under the
# same Node load; prints one table (bench/README.md), keeps the rounds in bench/results/.
BENCH_NODE := bench/node_modules/.package-lock.json

$(BENCH_NODE): bench/package-lock.json
	cd bench && $(NPM_CI)

bench: setup $(BENCH_NODE)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# make chaos [CHAOS_ARGS="--only db-freeze,redis-sigstop --seconds 3"]: each network fault
# between two instances and MariaDB or Redis, under load; one table (README, Reliability).
chaos: setup
	$(BIN)/python bench/chaos.py $(CHAOS_ARGS)
