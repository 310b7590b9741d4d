// Bundles the CLI into one CommonJS file (dist/istio-vm.cjs) that runs on Node 20 (tests) and is the payload of the
// single executable application in the .deb.
import { build } from "esbuild";
import { readFileSync } from "node:fs";

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));

await build({
  entryPoints: ["src/cli.ts"],
  outfile: "dist/istio-vm.cjs",
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
