#!/usr/bin/env bash
# npm start: mesh expansion on one machine, with istio-vm doing every step (the recipe of test/e2e/recipe.ts, which
# the end-to-end test test/e2e/recipe.test.ts runs too). As root: a "cluster" network namespace runs `istio-vm dev`,
# a booted Debian 12 container is the VM, and the recipe runs end to end. Without root: the steps that need no
# namespace, container or iptables. Everything it creates is removed at the end, also on Ctrl-C or failure.
#
#   npm start                      # legacy profile (Istio 0.8, the seed recipe)
#   npm start -- --profile istiod  # current Istio
#   npm start -- --profile istiod --loopback  # without VM container, also as root: ends with auto-registration
#                                             # (WorkloadGroup → WorkloadEntry) and a health flip
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

[ -d node_modules ] || { step "installing npm dependencies (npm ci)"; npm ci --no-audit --no-fund; }
step "building istio-vm (esbuild bundle: dist/istio-vm.cjs) and the walkthrough"
node scripts/build.mjs
mkdir -p dist/recipe
# --packages=external: the walkthrough's own dependencies resolve from this repository's node_modules.
npx esbuild test/e2e/recipe-cli.ts --bundle --platform=node --format=esm --packages=external \
  --log-level=warning --outfile=dist/recipe/recipe-cli.mjs
# The walkthrough traps SIGINT/SIGTERM itself and removes what it made before exiting.
exec node dist/recipe/recipe-cli.mjs "$@"
