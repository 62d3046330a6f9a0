# Shared by scripts/run and scripts/test: make sure redis-server and redis-cli exist.
# shellcheck shell=bash

ensure_redis() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "redis-server is missing: installing it with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 && apt-get install -y -qq redis-server >&2
        return 0
    fi
    cat >&2 <<'MSG'
redis-server is not installed, and this script can only install it as root on Debian/Ubuntu.
Install it, then run this again:
    sudo apt-get install redis-server      # Debian, Ubuntu
    brew install redis                     # macOS
MSG
    exit 1
}

ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "cargo is not installed: see https://rustup.rs" >&2
        exit 1
    fi
}

# promtool (Debian's prometheus package) for the metrics lint test; the test
# is skipped where it cannot be installed.
ensure_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "promtool is missing: installing Debian's prometheus package" >&2
        export DEBIAN_FRONTEND=noninteractive
        (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus) >&2 \
            || echo "could not install promtool; its test will be skipped" >&2
    fi
}

# openssl, which the Redis TLS tests use to make their certificates.
ensure_openssl() {
    if command -v openssl >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "openssl is missing: installing it with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 && apt-get install -y -qq openssl >&2
        return 0
    fi
    echo "openssl is not installed: install it, then run this again" >&2
    exit 1
}

# node and npm, and the Node packages the tests run (real BullMQ Workers of
# both majors, ioredis), installed from tests/node/package-lock.json.
ensure_node_packages() {
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
            echo "node/npm are missing: installing them with apt-get" >&2
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq >&2 && apt-get install -y -qq nodejs npm >&2
        else
            echo "node and npm are not installed: install Node.js 18 or later, then run this again" >&2
            exit 1
        fi
    fi
    local dir=tests/node
    # Reinstall only when the lock file changed since the last install.
    if [ ! -f "$dir/node_modules/.package-lock.json" ] \
        || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        echo "installing the tests' Node packages (npm ci in $dir)" >&2
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2
    fi
}
