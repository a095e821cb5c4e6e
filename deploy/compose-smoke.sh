#!/usr/bin/env bash
# Smoke test of docker-compose.yml where a Docker engine and the base image are available:
# bring the stack up, wait until all three simulated devices have readings stored, show
# them, and tear everything down again.
#   bash deploy/compose-smoke.sh            (PYTHON_IMAGE=... to use a local base image)
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'docker compose down -v --remove-orphans >/dev/null 2>&1 || true' EXIT
docker compose up -d --build
deadline=$((SECONDS + 120))
until docker compose exec -T collector telemetry devices list --format csv 2>/dev/null \
    | grep -c -- "-compose" | grep -qx 3; do
  if (( SECONDS > deadline )); then
    echo "compose smoke: devices did not all register within 120 s" >&2
    docker compose logs --tail 50 >&2
    exit 1
  fi
  sleep 2
done
sleep 5
docker compose exec -T collector telemetry series
rows=$(docker compose exec -T collector telemetry query --since 10m --format jsonl | wc -l)
echo "compose smoke: ${rows} readings in the last 10 minutes"
(( rows > 0 )) || { echo "compose smoke: no readings stored" >&2; exit 1; }
curl -fsS http://127.0.0.1:7879/healthz >/dev/null
echo "compose smoke: ok"
