// npm run bench: runs every bench/*.bench.ts (bundled with esbuild, run with this Node), collects the rows each prints
// as JSON lines ({"table": "...", "case": "...", "value": "...", "note": "..."}), prints them, and rewrites the
// benchmark table in docs/benchmarks.md between <!-- bench:start --> and <!-- bench:end -->.
// Filter: npm run bench -- iptables   (only bench files whose name contains "iptables"; the table is then left alone).
import { build } from "esbuild";
import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const filter = process.argv[2];
const files = readdirSync("bench")
  .filter((f) => f.endsWith(".bench.ts"))
  .filter((f) => filter === undefined || f.includes(filter))
  .sort();
mkdirSync(".cache/bench", { recursive: true });
spawnSync(process.execPath, ["scripts/build.mjs"], { stdio: "inherit" });
const rows = [];
let failed = false;
for (const file of files) {
  const out = join(".cache/bench", file.replace(/\.ts$/, ".mjs"));
  await build({
    entryPoints: [join("bench", file)],
    outfile: out,
    bundle: true,
    platform: "node",
    target: "node20",
    format: "esm",
    // npm packages stay imports, resolved from node_modules (native addons included).
    packages: "external",
    logLevel: "warning",
  });
  process.stderr.write(`\n== ${file}\n`);
  const result = spawnSync(process.execPath, [out], { stdio: ["ignore", "pipe", "inherit"], encoding: "utf8" });
  if (result.status !== 0) {
    process.stderr.write(`${file} failed (exit ${result.status})\n`);
    failed = true;
  }
  for (const line of (result.stdout ?? "").split("\n")) {
    if (!line.startsWith("{")) continue;
    const row = JSON.parse(line);
    rows.push(row);
    process.stdout.write(`${row.table} | ${row.case} | ${row.value}${row.note ? ` | ${row.note}` : ""}\n`);
  }
}
if (filter === undefined) {
  const table = [
    "| area | case | result | note |",
    "|---|---|---|---|",
    ...rows.map((r) => `| ${r.table} | ${r.case} | ${r.value} | ${r.note ?? ""} |`),
  ].join("\n");
  const doc = readFileSync("docs/benchmarks.md", "utf8");
  const updated = doc.replace(
    /<!-- bench:start -->[\s\S]*<!-- bench:end -->/,
    `<!-- bench:start -->\n${table}\n\nMeasured ${new Date().toISOString().slice(0, 10)} on ${process.platform}/${process.arch}, Node ${process.version}, ${(await import("node:os")).cpus().length} cores.\n<!-- bench:end -->`,
  );
  writeFileSync("docs/benchmarks.md", updated);
}
process.exitCode = failed ? 1 : 0;
