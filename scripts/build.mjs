// Bundles the CLI into one CommonJS file (dist/istio-vm.cjs) that runs on Node 20 (tests) and is the payload of the
// single executable application in the .deb.
import { build } from "esbuild";
import { chmodSync, readFileSync, renameSync } from "node:fs";
import { createRequire } from "node:module";

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

// Written to a temporary name and renamed: tests running the bundle never see a half-written file.
const outfile = "dist/istio-vm.cjs";
const tmpfile = `dist/.istio-vm.${process.pid}.cjs`;

await build({
  entryPoints: ["src/cli.ts"],
  outfile: tmpfile,
  plugins: [yargsCommonJs],
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  sourcemap: false,
  legalComments: "none",
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
renameSync(tmpfile, outfile);
