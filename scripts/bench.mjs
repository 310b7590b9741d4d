// npm run bench: runs every bench/*.bench.ts (bundled with esbuild, run with this Node), collects the rows each prints
// as JSON lines ({"table", "case", "value", and optionally "baseline", "ratio", "note"}), prints them, and rewrites
// the benchmark table in docs/benchmarks.md between <!-- bench:start --> and <!-- bench:end -->. A row's baseline is
// measured in the same run as its value (docs/benchmarks.md says how), so the ratio holds on a busy machine too.
// Filter: npm run bench -- iptables   (only bench files whose name contains "iptables"; their areas' rows are replaced).
import { build } from "esbuild";
import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";

const filter = process.argv[2];
const load = os
  .loadavg()
  .map((l) => l.toFixed(1))
  .join(" / ");
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
    const cells = [row.table, row.case, row.value, row.baseline, row.ratio, row.note].filter((c) => c !== undefined);
    process.stdout.write(`${cells.join(" | ")}\n`);
  }
}
// A filtered run (npm run bench -- agent) replaces only the table's rows of the areas it measured and keeps the rest.
const doc = readFileSync("docs/benchmarks.md", "utf8");
const block = /<!-- bench:start -->([\s\S]*)<!-- bench:end -->/.exec(doc)?.[1] ?? "";
const measured = new Set(rows.map((r) => r.table));
const kept =
  filter === undefined
    ? []
    : block
        .split("\n")
        .filter((line) => line.startsWith("|") && !/^\|\s*(area|-)/.test(line))
        .map((line) =>
          line
            .split("|")
            .slice(1, -1)
            .map((cell) => cell.trim()),
        )
        .map((c) => (c.length === 4 ? [c[0], c[1], c[2], "", "", c[3]] : c))
        .filter((c) => !measured.has(c[0]));
const cellsOf = (r) => [r.table, r.case, r.value, r.baseline ?? "", r.ratio ?? "", r.note ?? ""];
const byArea = [...kept, ...rows.map(cellsOf)];
const table = [
  "| area | case | result | baseline (same run) | ratio | note |",
  "|---|---|---|---|---|---|",
  ...byArea.map((c) => `| ${c.join(" | ")} |`),
].join("\n");
const runs = filter === undefined ? "all benchmarks" : `the ${[...measured].join(", ")} rows`;
const when = `Measured ${new Date().toISOString().slice(0, 10)} (${runs}) on ${process.platform}/${process.arch}, Node ${process.version}, ${os.cpus().length} cores, load average before the run ${load}.`;
const previous = [...block.matchAll(/^Measured .*$/gm)]
  .map((m) => m[0])
  .filter((line) => filter !== undefined && !line.includes(runs));
if (rows.length > 0) {
  writeFileSync(
    "docs/benchmarks.md",
    doc.replace(
      /<!-- bench:start -->[\s\S]*<!-- bench:end -->/,
      `<!-- bench:start -->\n${table}\n\n${[...previous, when].join("\n\n")}\n<!-- bench:end -->`,
    ),
  );
}
process.exitCode = failed ? 1 : 0;
