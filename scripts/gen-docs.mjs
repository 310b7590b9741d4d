// Regenerates the reference documents that are derived from the code (`npm run docs`):
//   docs/configuration.md  from the variable registry (src/config/registry.ts).
// Unit tests fail when a committed file differs from what this script writes (src/config/config-reference.test.ts).
// The TypeScript renderer is bundled with esbuild and run in memory, as packaging/build-deb.sh does for sidecar.env;
// the result is formatted with prettier, so `prettier --check .` and the staleness test agree.
import { build } from "esbuild";
import { mkdirSync, writeFileSync } from "node:fs";
import { format, resolveConfig } from "prettier";

async function render(module, exportName) {
  const result = await build({
    stdin: {
      contents: `export { ${exportName} as render } from ${JSON.stringify(module)};`,
      resolveDir: process.cwd(),
      sourcefile: "render-doc.ts",
      loader: "ts",
    },
    bundle: true,
    platform: "node",
    format: "esm",
    write: false,
    logLevel: "warning",
  });
  const loaded = await import(
    "data:text/javascript;base64," + Buffer.from(result.outputFiles[0].text).toString("base64")
  );
  return loaded.render();
}

const DOCS = [
  {
    path: "docs/configuration.md",
    module: "./src/config/config-reference.ts",
    exportName: "renderConfigurationReference",
  },
];

process.chdir(new URL("..", import.meta.url).pathname);
mkdirSync("docs", { recursive: true });
for (const doc of DOCS) {
  const options = (await resolveConfig(doc.path)) ?? {};
  const text = await format(await render(doc.module, doc.exportName), { ...options, filepath: doc.path });
  writeFileSync(doc.path, text);
  console.log(`wrote ${doc.path}`);
}
