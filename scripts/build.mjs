// Bundles the CLI into one CommonJS file (dist/istio-vm-main.cjs), the payload of the single executable application
// in the .deb, and writes what runs it on a machine's own Node (tests, `npm link`):
//   dist/istio-vm.cjs          a small launcher: compiles the bundle with V8's code cache when the cache fits
//   dist/istio-vm-main.cjs.v8  that cache: the SHA-256 of the bundle, then V8's cached data for it, made by this Node
// Compiling the bundle (2.2 MB minified) from source is about half of a short command's start on Node 20 (a CPU
// profile of `istio-vm --version` shows it in wrapSafe); with the cache V8 skips the parse, and since the cache is
// made after running `config` and `iptables plan` (scripts/warm-cache.mjs), it skips compiling what they call too.
// A cache made by another Node version, or for another bundle, is not used (the launcher compares the hash; V8
// checks its version and flags).
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { spawnSync } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));

const require = createRequire(import.meta.url);

// yargs' ESM build wraps help text mid-word (its ESM cliui shim has no word wrap); its CommonJS build wraps at word
// boundaries, so the bundle takes that one.
const yargsCommonJs = {
  name: "yargs-commonjs",
  setup(b) {
    b.onResolve({ filter: /^yargs$/ }, () => ({ path: require.resolve("yargs") }));
  },
};

// yargs checks its own invariants with node:assert (`notStrictEqual`, `strictEqual`); loading node:assert compiles six
// built-in modules at every start, the agent's included, and these two functions are all yargs takes from it. Every
// parser yargs makes also looks for a package.json in each directory from the working directory up to / (escalade's
// findUp) to guess a version and read a "yargs" key; istio-vm sets its own version and has no such key, so the search
// is answered "none" without touching the file system (and without the failed assertion's AssertionError, a diff of
// both values and the source line, that yargs then ignores).
const yargsAssert = {
  name: "yargs-assert",
  setup(b) {
    b.onResolve({ filter: /^escalade\/sync$/ }, (args) =>
      /[\\/]node_modules[\\/]yargs[\\/]/.test(args.importer)
        ? { path: "no-find-up", namespace: "yargs-assert" }
        : undefined,
    );
    b.onResolve({ filter: /^assert$/ }, (args) =>
      /[\\/]node_modules[\\/]yargs[\\/]/.test(args.importer)
        ? { path: "yargs-assert", namespace: "yargs-assert" }
        : undefined,
    );
    b.onLoad({ filter: /^no-find-up$/, namespace: "yargs-assert" }, () => ({
      loader: "js",
      contents: "module.exports = () => undefined;\n",
    }));
    b.onLoad({ filter: /^yargs-assert$/, namespace: "yargs-assert" }, () => ({
      loader: "js",
      contents: `"use strict";
const fail = (message, actual, expected, operator) => {
  throw new Error(message ?? \`expected \${String(actual)} \${operator} \${String(expected)}\`);
};
exports.notStrictEqual = (actual, expected, message) => {
  if (Object.is(actual, expected)) fail(message, actual, expected, "!==");
};
exports.strictEqual = (actual, expected, message) => {
  if (!Object.is(actual, expected)) fail(message, actual, expected, "===");
};
`,
    }));
  },
};

// Written to a temporary name and renamed: tests running the bundle never see a half-written file.
const outfile = "dist/istio-vm-main.cjs";
const tmpfile = `dist/.istio-vm-main.${process.pid}.cjs`;

await build({
  entryPoints: ["src/cli.ts"],
  outfile: tmpfile,
  plugins: [yargsCommonJs, yargsAssert],
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  sourcemap: false,
  legalComments: "none",
  // Whitespace and syntax only: 3.3 MB of source becomes 2.2 MB, and V8 holds the source of a script for as long as
  // it lives (functions compile lazily from it), with a table of its line ends once a stack trace needs a position
  // (0.65 MB for 83,000 lines). Names stay as written, so stack traces (--log-level debug) still name functions.
  minifyWhitespace: true,
  minifySyntax: true,
  banner: {
    // The shebang first, then the import.meta.url shim for the CommonJS output.
    js: "#!/usr/bin/env node\nconst __import_meta_url = require('node:url').pathToFileURL(__filename).href;",
  },
  define: {
    __ISTIO_VM_VERSION__: JSON.stringify(pkg.version),
    "import.meta.url": "__import_meta_url",
  },
  logLevel: "warning",
});
chmodSync(tmpfile, 0o755);

// V8 keeps a script's source for as long as the script lives (functions compile lazily from it): an ASCII-only
// bundle is held one byte per character, one with a single other character two bytes per character (5.8 MB of heap
// instead of 2.9 for the agent's whole life). esbuild escapes non-ASCII in strings, regular expressions and names;
// what is left is in comment lines (`//`, `/**`, ` *`: the registry's ── section rules, an ellipsis), made ASCII
// here. Anything else fails the build.
const text = readFileSync(tmpfile, "utf8").replace(/^\s*(\/\/|\/\*|\*).*$/gm, (line) =>
  line.replace(/[^\x00-\x7f]/g, "-"),
);
const nonAscii = /^.*[^\x00-\x7f].*$/m.exec(text);
if (nonAscii !== null) throw new Error(`the bundle has a non-ASCII character outside a comment: ${nonAscii[0]}`);
// esbuild keeps import() of what it does not bundle (node:… built-ins); the launcher's vm.Script has no module
// loader for it on Node 20, so such a load must be a require() (src/platform/fs.ts: loadBuiltin).
const external = /^.*\bimport\(\s*["'`].*$/m.exec(text);
if (external !== null) throw new Error(`the bundle imports a module with import(): ${external[0].trim()}`);
writeFileSync(tmpfile, text, { mode: 0o755 });

// The last line of the bundle names the build: the SHA-256 of everything above it. The cache file starts with the
// same 32 bytes, so the launcher matches a cache to the bundle it read without hashing 2.9 MB (or loading
// node:crypto) at every start; V8 itself rejects a cache made by another V8 version or with other flags.
const buildId = createHash("sha256").update(text).digest();
const bundled = `${text}//# istio-vm-build ${buildId.toString("hex")}\n`;
writeFileSync(tmpfile, bundled, { mode: 0o755 });

// The launcher compiles the bundle exactly as Node's CommonJS loader would (same wrapper), so the cache made here
// from the same text fits. The shebang line becomes a comment: same length, same line numbers.
const wrapped = (code) =>
  "(function (exports, require, module, __filename, __dirname) { " + code.replace(/^#!/, "//") + "\n});";
// The cache is made after a few short commands have run (scripts/warm-cache.mjs, in a child process with this Node
// and no flags), so it holds the functions they compiled, not only the bundle's top level: `istio-vm config` then
// spends about a quarter less CPU of its own. The commands read only the small VM root made here.
const warmRoot = mkdtempSync(join(tmpdir(), "istio-vm-build-"));
const cachefile = `${outfile}.v8`;
const tmpcache = `dist/.istio-vm-main.${process.pid}.v8`;
try {
  mkdirSync(join(warmRoot, "var/lib/istio/envoy"), { recursive: true });
  writeFileSync(join(warmRoot, "var/lib/istio/envoy/cluster.env"), "ISTIO_SERVICE_CIDR=10.96.0.0/12\n");
  writeFileSync(
    join(warmRoot, "var/lib/istio/envoy/sidecar.env"),
    "ISTIO_SVC_IP=10.0.0.5\nISTIO_INBOUND_PORTS=8080,9090\nENVOY_UID=1337\n",
  );
  const warm = spawnSync(
    process.execPath,
    [
      fileURLToPath(new URL("warm-cache.mjs", import.meta.url)),
      tmpfile,
      `${process.cwd()}/${outfile}`,
      `${tmpcache}.raw`,
      warmRoot,
    ],
    { stdio: ["ignore", "ignore", "inherit"], env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } },
  );
  if (warm.status !== 0) {
    rmSync(tmpfile, { force: true });
    throw new Error(`scripts/warm-cache.mjs failed (exit ${warm.status ?? warm.signal})`);
  }
  writeFileSync(tmpcache, Buffer.concat([buildId, readFileSync(`${tmpcache}.raw`)]));
} finally {
  rmSync(`${tmpcache}.raw`, { force: true });
  rmSync(warmRoot, { recursive: true, force: true });
}

const launcher = `#!/usr/bin/env node
// Made by scripts/build.mjs: runs ${outfile.slice("dist/".length)}, compiled with the V8 code cache beside it when that cache was made
// for this very file by this Node version (else compiled from source, as require() would).
"use strict";
const { readFileSync } = require("node:fs");
const { createRequire } = require("node:module");
const { join } = require("node:path");
const { Script } = require("node:vm");
const file = join(__dirname, ${JSON.stringify(outfile.slice("dist/".length))});
const source = readFileSync(file);
// The last line: "//# istio-vm-build " and 64 hex digits, then a newline (84 bytes).
const tail = source.subarray(-84).toString("latin1");
const id = tail.startsWith("//# istio-vm-build ") ? tail.slice(19, 83) : undefined;
let cachedData;
try {
  const cache = readFileSync(file + ".v8");
  if (id !== undefined && cache.subarray(0, 32).toString("hex") === id) cachedData = cache.subarray(32);
} catch {
  // no cache: compile from source
}
const wrapped = ${wrapped.toString()};
const script = new Script(wrapped(source.toString("latin1")), { filename: file, cachedData });
const bundle = { exports: {}, filename: file, id: file, loaded: false };
script.runInThisContext()(bundle.exports, createRequire(file), bundle, file, __dirname);
`;
const tmplauncher = `dist/.istio-vm.${process.pid}.cjs`;
writeFileSync(tmplauncher, launcher, { mode: 0o755 });

// Bundle first, then its cache, then the launcher: a process starting meanwhile finds a cache for another bundle at
// worst, and the hash check turns it away.
renameSync(tmpfile, outfile);
renameSync(tmpcache, cachefile);
renameSync(tmplauncher, "dist/istio-vm.cjs");
