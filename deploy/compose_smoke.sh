#!/usr/bin/env bash
# Build the images and run the compose stack on a real Docker engine, then check it end to end:
# readiness, an event and a recommendation through the published port, the non-root user,
# Prometheus scraping the service, state kept across a restart, the `train` profile writing an
# artifact that the restarted service serves, and the `baked` image serving that artifact.
#
#   sudo deploy/compose_smoke.sh            # as root when it has to start dockerd itself
#
# Made for machines that reach Debian's mirror and the package registries but no image registry:
#   - the Python base image is a Debian bookworm root file system made by debootstrap and
#     imported with `docker import` (cached under its tag between runs on one machine);
#   - Redis and Prometheus come from Debian's packages on that base (deploy/smoke/Dockerfile,
#     used through the override deploy/smoke/docker-compose.smoke.yml);
#   - builds run with host networking, the host's CA bundle as a build secret, and torch from a
#     local wheel directory (TORCH_WHEEL_DIR) instead of the PyTorch CPU index;
#   - Grafana is left out: its image cannot be built here (its queries are checked against a real
#     Prometheus by tests/deploy/test_dashboard_live.py).
#
# Exit status: 0 passed, 1 failed, 77 skipped (no engine can run here; the reason is printed).
# Everything it creates (containers, networks, volumes, the daemon it started) is removed on
# exit, failure and timeout included. Environment:
#   SMOKE_BUDGET_SECONDS  whole-run limit (default 1500)
#   TORCH_WHEEL_DIR       directory holding the torch CPU wheel (default /opt/wheels)
#   DEBIAN_MIRROR         debootstrap mirror (default http://deb.debian.org/debian)
#   CA_BUNDLE             CA certificates for pip inside builds (default the system bundle)
#   ML1M_SEQUENCES        sequences.txt to slice for training (default ../shared/data/ml-1m)
#   SMOKE_KEEP_IMAGES=0   also remove the product images at the end (the base stays cached)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
budget="${SMOKE_BUDGET_SECONDS:-1500}"
project="lrurec-smoke"
base_image="lrurec-smoke/base:bookworm"
runtime_image="lrurec:smoke"
baked_image="lrurec:smoke-baked"
work="$(mktemp -d /tmp/lrurec-compose-smoke.XXXXXX)"
started_dockerd=""
watchdog=""

log() { printf '[compose-smoke %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
skip() { log "SKIP: $*"; exit 77; }

compose() {
  docker-compose --project-name "$project" --project-directory "$root" \
    --file "$root/docker-compose.yml" --file "$root/deploy/smoke/docker-compose.smoke.yml" "$@"
}

teardown() {
  local status=$?
  set +e
  [[ -n "$watchdog" ]] && pkill -P "$watchdog" sleep 2>/dev/null && kill "$watchdog" 2>/dev/null
  log "tearing down (exit status $status)"
  if docker info >/dev/null 2>&1; then
    compose --profile train down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1
    docker rm --force "$project-baked" >/dev/null 2>&1
    docker rm --force "$project-volume-reader" >/dev/null 2>&1
    if [[ "${SMOKE_KEEP_IMAGES:-1}" == 0 ]]; then
      docker image rm "$runtime_image" "$baked_image" >/dev/null 2>&1
    fi
  fi
  if [[ -n "$started_dockerd" ]]; then
    log "stopping the dockerd this run started (pid $started_dockerd)"
    kill "$started_dockerd" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 1; done
    kill -9 "$started_dockerd" 2>/dev/null
  fi
  rm -rf "$work"
  exit "$status"
}

# ---------------------------------------------------------------------------------------------
# The engine: use a running one, else start dockerd (root only), else skip.

ensure_engine() {
  command -v docker >/dev/null || skip "no docker client on PATH"
  command -v docker-compose >/dev/null || skip "no docker-compose on PATH (.ci/install-system-deps)"
  if docker info >/dev/null 2>&1; then
    log "using the running Docker engine"
    return
  fi
  command -v dockerd >/dev/null || skip "no Docker engine runs and dockerd is not installed"
  [[ "$(id -u)" -eq 0 ]] || skip "no Docker engine runs and starting dockerd needs root"
  log "starting dockerd"
  dockerd >"$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && { log "dockerd is up"; return; }
    kill -0 "$started_dockerd" 2>/dev/null || break
    sleep 1
  done
  tail -n 20 "$work/dockerd.log" >&2 || true
  started_dockerd=""
  skip "dockerd did not start (its log is above)"
}

# BuildKit is needed for the Dockerfile's secret and bind mounts. Docker 23+ clients delegate it
# to buildx; older clients (Debian's docker.io 20.10) have it built in behind DOCKER_BUILDKIT=1.
build_command=()
choose_builder() {
  local client
  for client in docker /usr/bin/docker; do
    command -v "$client" >/dev/null || continue
    if "$client" buildx version >/dev/null 2>&1; then
      build_command=("$client" buildx build --load); return
    fi
    local major
    major="$("$client" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)"
    if [[ -n "$major" && "$major" -lt 23 ]]; then
      build_command=(env DOCKER_BUILDKIT=1 "$client" build); return
    fi
  done
  skip "no BuildKit builder: install buildx, or Debian's docker.io client"
}

build() {
  "${build_command[@]}" --network host --progress plain "$@" >>"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2
    return 1
  }
}

# ---------------------------------------------------------------------------------------------
# Images.

build_base() {
  if docker image inspect "$base_image" >/dev/null 2>&1; then
    log "base image $base_image is cached"
    return
  fi
  command -v debootstrap >/dev/null || skip "no debootstrap to make the base image (.ci/install-system-deps)"
  log "debootstrap: Debian bookworm with python3 (about 2 minutes)"
  local rootfs="$work/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    return 1
  }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' - "$base_image" >/dev/null
  rm -rf "$rootfs"
}

# The build context: the working tree's tracked and untracked-but-not-ignored files, as a fresh
# clone would have them, plus the torch wheel directory; never the developer's artifacts/.
make_context() {
  local context="$work/context"
  mkdir -p "$context/wheels"
  # --ignore-failed-read: a tracked file deleted in the working tree is left out, as in a commit.
  (cd "$root" && git ls-files --cached --others --exclude-standard -z \
    | tar --null -T - --ignore-failed-read -c) | tar -C "$context" -x
  local wheel_dir="${TORCH_WHEEL_DIR:-/opt/wheels}"
  compgen -G "$wheel_dir/torch-2.13.0+cpu-*.whl" >/dev/null \
    || skip "no torch 2.13.0+cpu wheel in $wheel_dir (set TORCH_WHEEL_DIR)"
  cp "$wheel_dir"/torch-2.13.0+cpu-*.whl "$context/wheels/"
  printf '%s\n' "$context"
}

build_product() {  # context target tag: the product image, torch from the context's wheels/
  local ca="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
  local secret=()
  [[ -f "$ca" ]] && secret=(--secret "id=ca_bundle,src=$ca")
  build "${secret[@]}" --build-arg "PYTHON_IMAGE=$base_image" --target "$2" --tag "$3" "$1"
}

build_images() {
  local context="$1"
  log "building $runtime_image (target runtime)"
  local started=$SECONDS
  build_product "$context" runtime "$runtime_image"
  runtime_build_seconds=$((SECONDS - started))
  log "building Redis and Prometheus from Debian's packages"
  build --build-arg "BASE_IMAGE=$base_image" --target redis \
    --tag lrurec-smoke/redis:bookworm "$context/deploy/smoke"
  build --build-arg "BASE_IMAGE=$base_image" --target prometheus \
    --tag lrurec-smoke/prometheus:bookworm "$context/deploy/smoke"
}

# ---------------------------------------------------------------------------------------------
# Checks.

fail() { log "FAIL: $*"; compose logs --tail 40 >&2 || true; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_healthy() {  # service... : wait until each container's health check passes
  local service container status
  for service in "$@"; do
    container="$(compose ps -q "$service")"
    [[ -n "$container" ]] || fail "$service has no container"
    for _ in $(seq 1 120); do
      status="$(docker inspect --format '{{.State.Health.Status}}' "$container")"
      [[ "$status" == healthy ]] && break
      [[ "$(docker inspect --format '{{.State.Running}}' "$container")" == true ]] \
        || fail "$service exited"
      sleep 1
    done
    [[ "$status" == healthy ]] || fail "$service not healthy after 120 s ($status)"
    log "$service is healthy"
  done
}

http() {  # method url [json body]: prints the body, fails on a non-2xx answer
  local args=(--silent --show-error --fail --max-time 10 -X "$1" "$2")
  [[ $# -ge 3 ]] && args+=(-H 'Content-Type: application/json' --data "$3")
  curl "${args[@]}"
}

json() {  # expression on the JSON document read from stdin, `d` bound to it
  python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"
}

positive() { python3 -c 'import sys; sys.exit(float(sys.argv[1]) <= 0)' "$1"; }

wait_ready() {  # base url: /readyz 200 within 120 s
  for _ in $(seq 1 120); do
    curl --silent --fail --max-time 2 "$1/readyz" >/dev/null && return
    sleep 1
  done
  fail "$1/readyz did not answer 200 within 120 s"
}

check_stack() {
  local api="$1" prometheus="$2"
  wait_ready "$api"
  demo_version="$(http GET "$api/readyz" | json 'd["model_version"]')"
  log "/readyz 200, serving $demo_version"

  local item
  item="$(http GET "$api/recommendations/smoke-user?k=1" | json 'd["items"][0]["item_id"]')"
  http POST "$api/events?k=5" "{\"user_id\": \"smoke-user\", \"item_id\": \"$item\", \"event_id\": \"e1\"}" \
    | json 'len(d["recommendations"])' | grep -qx 5 || fail "POST /events did not return 5 items"
  http GET "$api/recommendations/smoke-user?k=3" | json 'len(d["items"])' | grep -qx 3 \
    || fail "GET /recommendations did not return 3 items"
  log "an event and a recommendation through the published port"

  local uid
  uid="$(compose exec -T lrurec id -u | tr -d '\r')"
  [[ "$uid" == 10001 ]] || fail "the service runs as uid $uid, not 10001"
  log "the service runs as uid 10001"

  local target value
  for _ in $(seq 1 60); do
    target="$(http GET "$prometheus/api/v1/targets" \
      | json '[t["health"] for t in d["data"]["activeTargets"] if t["labels"]["job"] == "lrurec"]')"
    value="$(http GET "$prometheus/api/v1/query?query=sum(lrurec_events_total)" \
      | json 'd["data"]["result"][0]["value"][1] if d["data"]["result"] else 0')"
    [[ "$target" == "['up']" ]] && positive "$value" && break
    sleep 2
  done
  [[ "$target" == "['up']" ]] || fail "Prometheus target lrurec is $target"
  positive "$value" || fail "lrurec_events_total is $value"
  log "Prometheus scrapes lrurec (up) and sum(lrurec_events_total) = $value"
}

check_restart_keeps_state() {
  local api="$1" before after
  before="$(http GET "$api/users/smoke-user" | json 'd["events_applied"]')"
  compose restart --timeout 20 lrurec >/dev/null 2>&1
  wait_healthy lrurec
  after="$(http GET "$api/users/smoke-user" | json 'd["events_applied"]')"
  [[ "$before" == 1 && "$after" == "$before" ]] \
    || fail "events_applied was $before before the restart and $after after"
  log "docker-compose restart lrurec kept the user's state (events_applied = $after)"
}

make_training_slice() {
  local slice="$work/data/ml-1m"
  mkdir -p "$slice"
  local sequences="${ML1M_SEQUENCES:-$root/../shared/data/ml-1m/sequences.txt}"
  if [[ -f "$sequences" ]]; then
    head -n 300 "$sequences" >"$slice/sequences.txt"
    log "training slice: the first 300 users of $sequences"
  else
    python3 - "$slice/sequences.txt" <<'PY'
import random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as out:
    for user in range(1, 301):
        print(user, *(rng.randrange(1, 201) for _ in range(rng.randrange(5, 60))), file=out)
PY
    log "training slice: 300 synthetic users ($sequences not found)"
  fi
  chmod -R a+rX "$work/data"
  printf '%s\n' "$work/data"
}

check_train_profile() {
  local api="$1" data="$2" version
  log "train profile on the slice (30 s budget)"
  local started=$SECONDS
  LRUREC_DATA_DIR="$data" LRUREC_TRAIN_MAX_MINUTES=0.5 \
    compose --profile train run --rm -T train >"$work/train.log" 2>&1 \
    || { tail -n 30 "$work/train.log" >&2; fail "the train profile failed"; }
  log "train profile wrote the artifact in $((SECONDS - started)) s"
  compose restart --timeout 20 lrurec >/dev/null 2>&1
  wait_healthy lrurec
  version="$(http GET "$api/readyz" | json 'd["model_version"]')"
  [[ -n "$version" && "$version" != "$demo_version" ]] \
    || fail "after training the service serves $version (the demo was $demo_version)"
  trained_version="$version"
  http GET "$api/recommendations/smoke-user?k=3" | json 'len(d["items"])' | grep -qx 3 \
    || fail "the trained model did not recommend"
  log "the restarted service serves the trained artifact ($version)"
}

check_baked() {
  local context="$1" port version
  log "building $baked_image with the trained artifact"
  docker create --name "$project-volume-reader" --volume "${project}_artifacts:/artifacts" \
    "$runtime_image" >/dev/null
  mkdir -p "$context/artifacts"
  docker cp "$project-volume-reader:/artifacts/current" "$context/artifacts/current"
  docker rm "$project-volume-reader" >/dev/null
  rm -rf "$context/artifacts/current/checkpoints"
  local started=$SECONDS
  build_product "$context" baked "$baked_image"
  baked_build_seconds=$((SECONDS - started))
  port="$(free_port)"
  docker run --detach --name "$project-baked" --publish "127.0.0.1:$port:8000" "$baked_image" >/dev/null
  wait_ready "http://127.0.0.1:$port"
  version="$(http GET "http://127.0.0.1:$port/readyz" | json 'd["model_version"]')"
  [[ "$version" == "$trained_version" ]] || fail "the baked image serves $version, not $trained_version"
  log "the baked image serves $version on its embedded Redis"
  docker rm --force "$project-baked" >/dev/null
}

size_mb() { docker image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }

# ---------------------------------------------------------------------------------------------

main() {
  local started=$SECONDS
  trap teardown EXIT
  # The budget: a watchdog ends this shell (and so runs the teardown) when time is up. Its
  # children are signalled too, since bash runs a trap only after the current command ends.
  # Its sleep gets no output pipe, so a caller reading ours sees the end when this shell ends.
  (sleep "$budget" </dev/null >/dev/null 2>&1 && log "FAIL: over the budget of $budget s" \
    && kill -TERM $$ && pkill -TERM -P $$) &
  watchdog=$!
  trap 'exit 1' TERM INT

  ensure_engine
  choose_builder
  compose --profile train down --volumes --remove-orphans >/dev/null 2>&1 || true
  build_base
  local context
  context="$(make_context)"
  build_images "$context"

  export LRUREC_IMAGE_TAG=smoke LRUREC_PORT PROMETHEUS_PORT
  LRUREC_PORT="$(free_port)"
  PROMETHEUS_PORT="$(free_port)"
  log "Grafana is left out: its image cannot be built here (dashboard queries are checked live elsewhere)"
  log "docker-compose up: redis, lrurec, prometheus"
  compose up --detach --no-build redis lrurec prometheus >"$work/up.log" 2>&1 \
    || { cat "$work/up.log" >&2; fail "docker-compose up failed"; }
  wait_healthy redis lrurec prometheus
  local api="http://127.0.0.1:$LRUREC_PORT"
  check_stack "$api" "http://127.0.0.1:$PROMETHEUS_PORT"
  check_restart_keeps_state "$api"
  check_train_profile "$api" "$(make_training_slice)"
  check_baked "$context"

  log "PASSED in $((SECONDS - started)) s (builds: runtime ${runtime_build_seconds} s," \
    "baked ${baked_build_seconds} s);" \
    "image sizes: runtime $(size_mb "$runtime_image"), baked $(size_mb "$baked_image")," \
    "base $(size_mb "$base_image")"
}

main "$@"
