#!/bin/sh
# Deploys edge-classify on a Docker Swarm, the way OpenFaaS's deploy_stack.sh did: it
# looks at the architectures it runs on (this manager's `uname -m`, and every node's
# platform) and gives each architecture's service one replica per node of it.
#
#   ./deploy_stack.sh                 # IMAGE, VERSION and STACK may be set in the environment
#   ./deploy_stack.sh --dry-run       # print the resolved stack file instead of deploying
set -eu

cd "$(dirname "$0")"
STACK=${STACK:-classify}
export IMAGE="${IMAGE:-ghcr.io/edge-classify/classify}"
export VERSION="${VERSION:-0.1.0}"

case "$(uname -m)" in
  armv7l|armv6l) echo "Manager is 32-bit ARM (armv7): the armv7 image runs here" >&2 ;;
  aarch64|arm64) echo "Manager is 64-bit ARM (arm64): the arm64 image runs here" >&2 ;;
  x86_64|amd64)  echo "Manager is x86_64: the amd64 image runs here" >&2 ;;
  *) echo "Unsupported architecture $(uname -m): images exist for arm64, armv7 and amd64" >&2
     exit 1 ;;
esac

# Nodes per architecture, as Swarm reports them (aarch64, armv7l, x86_64).
count_nodes() {
  docker node ls --quiet 2>/dev/null |
    xargs -r docker node inspect --format '{{.Description.Platform.Architecture}}' |
    grep -c -x "$1" || true
}

if [ "${1:-}" = "--dry-run" ]; then
  export ARM64_REPLICAS="${ARM64_REPLICAS:-1}" ARMV7_REPLICAS="${ARMV7_REPLICAS:-1}" AMD64_REPLICAS="${AMD64_REPLICAS:-0}"
  exec docker stack config -c docker-stack.yml
fi

if ! docker node ls >/dev/null 2>&1; then
  echo "This is not a Swarm manager: run 'docker swarm init' (or join) first" >&2
  exit 1
fi
export ARM64_REPLICAS="${ARM64_REPLICAS:-$(count_nodes aarch64)}"
export ARMV7_REPLICAS="${ARMV7_REPLICAS:-$(count_nodes armv7l)}"
export AMD64_REPLICAS="${AMD64_REPLICAS:-$(count_nodes x86_64)}"
echo "Replicas: arm64 $ARM64_REPLICAS, armv7 $ARMV7_REPLICAS, amd64 $AMD64_REPLICAS"

docker stack deploy --compose-file docker-stack.yml "$STACK"
echo "Deployed stack $STACK: try  curl --data-binary @tiger.jpg http://NODE:8080/"
