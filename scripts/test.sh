#!/usr/bin/env bash
# The test command README.md gives: makes sure what the tests need is on the machine (starting
# or installing it when missing), then runs every test of the workspace. Extra arguments go to
# `cargo test`, e.g. `bash scripts/test.sh -p integration-tests --test journey`.
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL runs on every machine (127.0.0.1:5432, trust auth, database `test`); the storage
# and fault tests use it. Start it if it stopped.
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
# psql: the tests that use PostgreSQL create their schemas and databases with it.
if ! command -v psql >/dev/null; then
  apt-get install -y postgresql-client >/dev/null || { apt-get update >/dev/null && apt-get install -y postgresql-client >/dev/null; }
fi
# fleet-bench's smoke test measures Mosquitto side by side with the gateway (Debian's package).
if [ ! -x /usr/sbin/mosquitto ]; then
  apt-get install -y mosquitto >/dev/null || { apt-get update >/dev/null && apt-get install -y mosquitto >/dev/null; }
fi

# The Python example adapter (examples/python-parking) runs against the partner kit in
# tests/tests/python_adapter.rs, from target/python-venv with the example's pinned requirements.
# Set up again whenever requirements.txt changes.
requirements=examples/python-parking/requirements.txt
if ! cmp -s "$requirements" target/python-venv/requirements.txt; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get install -y python3 python3-venv >/dev/null || { apt-get update >/dev/null && apt-get install -y python3 python3-venv >/dev/null; }
  fi
  rm -rf target/python-venv
  python3 -m venv target/python-venv
  target/python-venv/bin/pip install -q -r "$requirements"
  cp "$requirements" target/python-venv/requirements.txt
fi
# The social login test drives the verification page in headless Chromium (Debian's package).
if [ ! -x /usr/bin/chromium ]; then
  apt-get install -y chromium >/dev/null || { apt-get update >/dev/null && apt-get install -y chromium >/dev/null; }
fi

if [ "$#" -eq 0 ]; then
  set -- --workspace
fi
cargo test --locked "$@"
