#!/usr/bin/env bash
# Start the local Redis, PostgreSQL and RabbitMQ the integration tests use, if they are not already
# up (a no-op when they are). The start commands are this machine kind's own (Debian packages); on
# another machine point MLSIG_TEST_PG_URL / MLSIG_TEST_REDIS_URL at your servers instead. RabbitMQ
# is the optional broker (README.md, "Choosing a broker"): where it is not installed, it is skipped.
set -euo pipefail

wait_for() { # name, command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "ensure-services: $name did not come up" >&2
  return 1
}

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "ensure-services: starting redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_for redis redis-cli -h 127.0.0.1 -p 6379 ping

if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
  echo "ensure-services: starting postgresql"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
wait_for postgresql pg_isready -h 127.0.0.1 -p 5432
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1; then
  createdb -h 127.0.0.1 -U postgres test
fi

# RabbitMQ: ready when the node answers the CLI (`rabbitmq-diagnostics -q ping`, about 0.4 s, and
# it fails as fast while the node is down) and its AMQP listener accepts connections on 5672 (the
# node answers ping a little before the listener is up). `-detached` returns at once, so wait.
rabbitmq_ready() {
  timeout 10 rabbitmq-diagnostics -q ping >/dev/null 2>&1 && (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}
up="redis and postgresql"
if command -v rabbitmq-server >/dev/null 2>&1 && command -v rabbitmq-diagnostics >/dev/null 2>&1; then
  up="redis, postgresql and rabbitmq"
  if ! rabbitmq_ready; then
    if ! timeout 10 rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
      echo "ensure-services: starting rabbitmq"
      rabbitmq-server -detached
    fi
    deadline=$((SECONDS + 60))
    until rabbitmq_ready; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "ensure-services: rabbitmq did not come up within 60 s (rabbitmq-diagnostics -q ping" \
          "and a connection to 127.0.0.1:5672); see /var/log/rabbitmq/" >&2
        exit 1
      fi
      sleep 1
    done
  fi
else
  echo "ensure-services: rabbitmq-server is not installed; skipping it (the default broker is Redis)"
fi


# Optional: the compose file is validated with `docker-compose config -q` (Debian's docker-compose
# parses without an engine). Best effort: the test that uses it skips when it cannot be installed.
if ! command -v docker-compose >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null 2>&1 \
    || echo "ensure-services: docker-compose not installed; its compose check will be skipped"
fi

# Required: promtool/amtool and the prometheus/alertmanager daemons (Debian's 2.42 / 0.25), which
# tests/unit/test_monitoring_rules.py runs on loopback ports of its own. The packages' postinst
# would start both daemons on 9090/9093/9094: a policy-rc.d that exits 101 forbids that (ours is
# removed afterwards; one that was already there is left alone), and whatever started anyway is
# stopped after: only processes of the two Debian binaries that appeared during the install and
# are not a test's own (those listen on 127.0.0.1 by flag). Matched by /proc/PID/exe, since
# "prometheus-alertmanager" is longer than the 15 characters pgrep/pkill compare.
debian_monitoring_daemons() { # PIDs of /usr/bin/prometheus{,-alertmanager} not started by a test
  local proc exe
  for proc in /proc/[0-9]*; do
    exe=$(readlink "$proc/exe" 2>/dev/null) || continue
    case "$exe" in
      /usr/bin/prometheus|/usr/bin/prometheus-alertmanager)
        tr '\0' ' ' <"$proc/cmdline" 2>/dev/null | grep -q -- '--web.listen-address=127.0.0.1:' \
          || echo "${proc#/proc/}" ;;
    esac
  done
}
if ! command -v promtool >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-services: promtool/amtool are missing; run this script as root on a Debian machine" \
      "(it installs the Debian packages prometheus and prometheus-alertmanager)" >&2
    exit 1
  fi
  echo "ensure-services: installing prometheus and prometheus-alertmanager (promtool, amtool)"
  running_before=" $(debian_monitoring_daemons | tr '\n' ' ') "
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  install_ok=1
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    prometheus prometheus-alertmanager) >/tmp/ensure-services-prometheus.log 2>&1 || install_ok=""
  if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  for pid in $(debian_monitoring_daemons); do
    case "$running_before" in
      *" $pid "*) ;;
      *) echo "ensure-services: stopping the daemon the package started (pid $pid)"; kill "$pid" 2>/dev/null || true ;;
    esac
  done
  if [ -z "$install_ok" ] || ! command -v promtool >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then
    echo "ensure-services: installing prometheus/prometheus-alertmanager failed; the monitoring tests" \
      "need promtool, amtool, prometheus and prometheus-alertmanager (log: /tmp/ensure-services-prometheus.log)" >&2
    exit 1
  fi
fi
echo "ensure-services: promtool $(promtool --version 2>&1 | awk 'NR==1{print $3}') and amtool $(amtool --version 2>&1 | awk 'NR==1{print $3}') are installed"
echo "ensure-services: $up are up"
