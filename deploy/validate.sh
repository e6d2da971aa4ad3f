#!/usr/bin/env bash
# Validates deploy/ and the Dockerfile offline (tests/deploy.rs runs it; make deploy-tools installs the tools):
#   - the Kubernetes, prometheus-operator and KServe manifests, the compose file and the Swarm stack, the Grafana
#     dashboard and the metric names of the rules and panels: deploy/tools/validate.mjs
#   - the Prometheus configurations (compose's and the stack's) and rules, and the rules' unit tests: promtool
#   - the Dockerfiles (the image's and the stack's helpers'): hadolint
# Every check runs; the exit status is 1 if any failed.
#
#   deploy/validate.sh [DEPLOY_DIR]     (default: this folder; tests give a broken copy to see it caught)
# Environment: EMBER_BIN (ember's binary, to check flags and EMBER_* names; default target/release/ember),
# DOCKERFILE (default: the repository's), EMBER_DEPLOY_TOOLS (default: .venv/deploy-tools).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
deploy=$(cd "${1:-$here}" && pwd)
tools=${EMBER_DEPLOY_TOOLS:-$root/.venv/deploy-tools}
dockerfile=${DOCKERFILE:-$root/Dockerfile}
ember=${EMBER_BIN:-$root/target/release/ember}
hadolint=${HADOLINT:-$root/.venv/bin/hadolint}

if [ ! -f "$tools/.installed" ] || [ ! -x "$hadolint" ]; then
  echo "the validation tools are missing ($tools, $hadolint): run make deploy-tools" >&2
  exit 2
fi

status=0
step() {
  echo "== $*"
  if ! "$@"; then
    echo "FAILED: $*"
    status=1
  fi
}

ember_args=()
if [ -x "$ember" ]; then ember_args=(--ember "$ember"); fi
step node "$here/tools/validate.mjs" --tools "$tools" --deploy "$deploy" --metrics "$root/src/metrics.rs" \
  --dockerfile "$dockerfile" "${ember_args[@]}"
step "$tools/promtool" check config "$deploy/compose/prometheus/prometheus.yml"
step "$tools/promtool" check rules "$deploy/compose/prometheus/rules.yml"
step "$tools/promtool" test rules "$deploy/compose/prometheus/rules.test.yml"
step "$hadolint" --no-color "$dockerfile"
step "$tools/promtool" check config "$deploy/swarm/prometheus.yml"
step "$hadolint" --no-color "$deploy/swarm/Dockerfile"
[ $status = 0 ] && echo "deploy/: every check passed" || echo "deploy/: some checks failed"
exit $status
