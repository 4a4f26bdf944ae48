#!/usr/bin/env bash
# Start a PostgreSQL server on 127.0.0.1 for asyncpipe's SQL tests (tests/io/).
#
# Run as root on a Debian/Ubuntu machine after `apt-get install -y postgresql`.
# Logs go to stderr; stdout is one line for the caller to evaluate:
#
#     eval "$(bash .ci/postgres.sh)"      # exports ASYNCPIPE_TEST_PG_URL
#
# Idempotent: re-running reuses the cluster, the role and the database.
# Overrides: ASYNCPIPE_PG_USER, ASYNCPIPE_PG_PASSWORD, ASYNCPIPE_PG_DB, ASYNCPIPE_PG_PORT.
set -euo pipefail

user="${ASYNCPIPE_PG_USER:-asyncpipe}"
password="${ASYNCPIPE_PG_PASSWORD:-asyncpipe-test}"
db="${ASYNCPIPE_PG_DB:-asyncpipe_test}"
port="${ASYNCPIPE_PG_PORT:-5432}"

log() { echo "postgres.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "must run as root (it starts the server as the 'postgres' system user)"; exit 1
fi
if ! command -v pg_lsclusters >/dev/null; then
    log "postgresql-common is missing: apt-get install -y postgresql"; exit 1
fi

# The cluster the package created (Debian: 15/main), or a new one.
read -r version cluster _ < <(pg_lsclusters -h | head -n 1) || true
if [ -z "${version:-}" ]; then
    version="$(ls /usr/lib/postgresql | sort -V | tail -n 1)"
    cluster=main
    log "creating cluster $version/$cluster on port $port"
    pg_createcluster --port "$port" "$version" "$cluster" >&2
fi
port_now="$(pg_conftool -s "$version" "$cluster" show port 2>/dev/null || echo "$port")"
if [ "$port_now" != "$port" ]; then
    pg_conftool "$version" "$cluster" set port "$port"
fi

# listen_addresses stays at its default, localhost (127.0.0.1 and ::1).
# Start it (containers have no systemd: pg_ctlcluster runs postgres as its owner).
if pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $4}' | grep -q online; then
    log "cluster $version/$cluster already running"
else
    log "starting cluster $version/$cluster"
    pg_ctlcluster "$version" "$cluster" start >&2
fi
for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
done
pg_isready -h 127.0.0.1 -p "$port" >&2 || { log "server did not become ready"; exit 1; }

psql_admin() { runuser -u postgres -- psql -p "$port" -X -q -v ON_ERROR_STOP=1 "$@"; }

# Role and database (password authentication over TCP: Debian's pg_hba.conf uses scram-sha-256).
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" = 1 ]; then
    psql_admin -c "ALTER ROLE \"$user\" WITH LOGIN PASSWORD '$password'" >&2
else
    psql_admin -c "CREATE ROLE \"$user\" WITH LOGIN PASSWORD '$password'" >&2
fi
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE \"$db\" OWNER \"$user\"" >&2
fi

url="postgresql://$user:$password@127.0.0.1:$port/$db"
PGPASSWORD="$password" psql -X -q -h 127.0.0.1 -p "$port" -U "$user" -d "$db" -c "SELECT 1" >/dev/null \
    || { log "cannot log in as $user"; exit 1; }
log "ready: postgresql://$user:***@127.0.0.1:$port/$db"
echo "export ASYNCPIPE_TEST_PG_URL='$url'"
