#!/usr/bin/env bash
# `npm test`: everything, in order — system packages (as root), npm ci, type-check, lint, unit tests, the .deb,
# integration tests, lintian, end-to-end tests on a booted Debian 12. Works from a clean checkout on a fresh
# Debian 12 machine as root (Node.js >= 20.18 and npm must be there). Under CI=true (.ci/run) no test may skip
# for a missing tool or missing root: test/support/requirements.ts turns that into a failure.
#
# Usage: scripts/test.sh            every step
#        SKIP_E2E=1 scripts/test.sh  all but the booted-Debian tests (local iterations only; CI ignores it)
set -uo pipefail

# Debian packages the tests use. One list: add what a new test needs here.
APT_PACKAGES=(
	iptables iproute2          # interception tests inside network namespaces, and the package's dependencies
	systemd systemd-container  # systemd-analyze, systemd-nspawn (the e2e machine)
	mmdebstrap zstd            # the e2e root filesystem and its cache
	util-linux tar             # nsenter, tar --zstd
	dpkg-dev binutils          # dpkg-shlibdeps and strip for the .deb
	lintian
	dnsmasq-base bind9-host    # DNS tests
	openssh-server openssh-client
	openssl
	ca-certificates curl
	python3 python3-yaml       # PyYAML (what cloud-init parses user-data with) checks --cloud-init; netns listeners
)

# Debian's kubectl (package kubernetes-client, 1.20 on Debian 12), which the dev API server tests run against
# (test/support/kubectl.ts), beside any other kubectl on PATH. It is unpacked with dpkg-deb -x into this directory
# instead of installed: its /usr/bin/kubectl would conflict with (or silently replace) a kubectl the machine already
# has, such as the Google Cloud SDK's package `kubectl`.
KUBECTL_DEB_PACKAGE=kubernetes-client
KUBECTL_DEB_ROOT=/var/cache/istio-vm-test/kubernetes-client

cd "$(dirname "$0")/.." || exit 2
START=$(date +%s)
declare -a RESULTS=()
FAILED=0

section() {
	printf '\n\033[1m======== %s ========\033[0m  (%s, %ss since start)\n' "$*" "$(date -u +%H:%M:%S)" "$(($(date +%s) - START))"
}

# step NAME COMMAND...: runs one step, records its result, carries on (later steps report on their own).
step() {
	local name=$1
	shift
	section "$name"
	local t0=$SECONDS
	if "$@"; then
		RESULTS+=("ok      $name ($((SECONDS - t0))s)")
		return 0
	fi
	RESULTS+=("FAILED  $name ($((SECONDS - t0))s)")
	FAILED=1
	return 1
}

skip() {
	section "$1"
	echo "not run: $2"
	RESULTS+=("skipped $1: $2")
	[ "${CI:-}" = true ] && FAILED=1
}

install_system_packages() {
	local missing=()
	for pkg in "${APT_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		echo "all ${#APT_PACKAGES[@]} packages present"
		return 0
	fi
	if [ "$(id -u)" -ne 0 ]; then
		echo "missing (not root, so not installed): ${missing[*]}"
		echo "tests that need them skip (and fail under CI=true)"
		[ "${CI:-}" != true ]
		return
	fi
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

debian_kubectl() {
	local candidate
	candidate=$(apt-cache policy "$KUBECTL_DEB_PACKAGE" 2>/dev/null | awk '/Candidate:/ {print $2}')
	if [ -x "$KUBECTL_DEB_ROOT/usr/bin/kubectl" ] && [ -n "$candidate" ] &&
		[ "$(cat "$KUBECTL_DEB_ROOT/VERSION" 2>/dev/null)" = "$candidate" ]; then
		echo "$KUBECTL_DEB_PACKAGE $candidate already unpacked in $KUBECTL_DEB_ROOT"
		return 0
	fi
	if [ "$(id -u)" -ne 0 ]; then
		echo "not root: $KUBECTL_DEB_PACKAGE not unpacked into $KUBECTL_DEB_ROOT (kubectl tests use what is on PATH)"
		[ "${CI:-}" != true ]
		return
	fi
	if [ -z "$candidate" ] || [ "$candidate" = "(none)" ]; then
		apt-get update -qq || return 1
		candidate=$(apt-cache policy "$KUBECTL_DEB_PACKAGE" | awk '/Candidate:/ {print $2}')
	fi
	local work
	work=$(mktemp -d) || return 1
	# apt's download sandbox user must be able to write there.
	chown _apt "$work" 2>/dev/null || true
	local rc=0
	(cd "$work" && apt-get download -qq "$KUBECTL_DEB_PACKAGE") &&
		rm -rf "$KUBECTL_DEB_ROOT" && mkdir -p "$KUBECTL_DEB_ROOT" &&
		dpkg-deb -x "$work"/"$KUBECTL_DEB_PACKAGE"_*.deb "$KUBECTL_DEB_ROOT" &&
		echo "$candidate" >"$KUBECTL_DEB_ROOT/VERSION" &&
		"$KUBECTL_DEB_ROOT/usr/bin/kubectl" version --client || rc=1
	rm -rf "$work"
	return $rc
}

npm_dependencies() {
	command -v node >/dev/null && command -v npm >/dev/null || {
		echo "Node.js >= 20.18 and npm are needed (Debian 12's own nodejs is 18)" >&2
		return 1
	}
	node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=18)?0:1)' || {
		echo "Node.js $(node --version) is too old: 20.18 or newer is needed" >&2
		return 1
	}
	# A fresh checkout (or CI) gets exactly the lockfile. A working tree whose node_modules matches the lockfile
	# is left alone: npm ci would delete node_modules under whatever else is running from it.
	if [ "${CI:-}" = true ] || [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
		npm ci --no-audit --no-fund
	else
		echo "node_modules matches package-lock.json: npm ci not needed"
	fi
}

VERSION=$(node -p 'require("./package.json").version' 2>/dev/null || echo unknown)
DEB=dist/istio-vm-agent_${VERSION}_amd64.deb

step "system packages (apt-get)" install_system_packages
step "Debian kubectl (dpkg-deb -x)" debian_kubectl
step "npm dependencies (npm ci)" npm_dependencies || {
	echo "cannot continue without node_modules" >&2
	exit 1
}
step "type-check (tsc)" npm run --silent typecheck
step "lint (eslint, prettier)" npm run --silent lint
step "unit tests" npx vitest run --project unit
# Built before the integration tests, which inspect it (test/integration/package.test.ts), so it is built once.
if step "package (npm run package)" npm run --silent package; then
	# Every later step tests this file, even if the working tree changes meanwhile.
	export ISTIO_VM_DEB="$PWD/$DEB"
	step "integration tests" npx vitest run --project integration
	step "lintian" lintian --fail-on error,warning "$DEB"
	if [ -n "${SKIP_E2E:-}" ] && [ "${CI:-}" != true ]; then
		skip "end-to-end tests (booted Debian 12)" "SKIP_E2E is set"
	else
		step "end-to-end tests (booted Debian 12)" npx vitest run --project e2e
	fi
else
	step "integration tests" npx vitest run --project integration
	skip "lintian" "no package"
	skip "end-to-end tests (booted Debian 12)" "no package"
fi

section "summary"
printf '%s\n' "${RESULTS[@]}"
echo "total: $(($(date +%s) - START))s"
if [ "$FAILED" -ne 0 ]; then
	echo "npm test: FAILED"
	exit 1
fi
echo "npm test: all passed"
