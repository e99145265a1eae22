#!/usr/bin/env bash
# Creates the three Redis Clusters of the `cluster` profile of
# docker-compose.yml (three primaries each, every slot covered) with the
# host's redis-cli, once their nodes answer. Idempotent: a cluster whose
# first node already reports cluster_state:ok is left as it is.
#
# Usage: docker-compose --profile cluster up -d && bash scripts/compose-clusters.sh
set -euo pipefail

if ! command -v redis-cli >/dev/null 2>&1; then
  echo "compose-clusters: redis-cli is needed (apt-get install redis-tools)" >&2
  exit 1
fi
for base in 7001 7011 7021; do
  ports=("$base" "$((base + 1))" "$((base + 2))")
  for port in "${ports[@]}"; do
    for _ in $(seq 1 100); do
      redis-cli -p "$port" PING >/dev/null 2>&1 && break
      sleep 0.1
    done
    redis-cli -p "$port" PING >/dev/null || { echo "compose-clusters: nothing answers on $port" >&2; exit 1; }
  done
  if redis-cli -p "$base" CLUSTER INFO | grep -q '^cluster_state:ok'; then
    echo "cluster on ${ports[*]}: already created"
    continue
  fi
  redis-cli --cluster create "127.0.0.1:${ports[0]}" "127.0.0.1:${ports[1]}" \
    "127.0.0.1:${ports[2]}" --cluster-yes >/dev/null
  for _ in $(seq 1 100); do
    redis-cli -p "$base" CLUSTER INFO | grep -q '^cluster_state:ok' && break
    sleep 0.1
  done
  echo "cluster on ${ports[*]}: created (redis-cluster://127.0.0.1:$base)"
done
