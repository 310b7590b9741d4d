/**
 * A command loads only what it uses (src/cli/commands.ts): `--version`, `--help` and `config` run without the
 * network stacks that gRPC, the kube client and the dev control plane pull in. Observed in the built CLI through
 * Node's own list of the built-in modules a process loaded (`process.moduleLoadList`), written at exit by a preload.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Script } from "node:vm";
import { afterAll, describe, expect, it } from "vitest";
import { CLI } from "../support/cli.js";

const dir = mkdtempSync(join(tmpdir(), "istio-vm-startup-"));
const preload = join(dir, "loaded.cjs");
writeFileSync(
  preload,
  'process.on("exit", () => process.stderr.write("\\nLOADED " + JSON.stringify(process.moduleLoadList) + "\\n"));\n',
);
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Built-in modules the command loaded (`NativeModule http2` → `http2`). */
function builtinsLoaded(args: readonly string[]): string[] {
  const result = spawnSync(process.execPath, ["--require", preload, CLI, ...args], {
    env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", ISTIO_VM_ROOT: dir },
    encoding: "utf8",
  });
  expect(result.status, result.stderr).not.toBeNull();
  const line = result.stderr.split("\n").find((l) => l.startsWith("LOADED "));
  expect(line, result.stderr).toBeDefined();
  const list = JSON.parse((line ?? "").slice("LOADED ".length)) as string[];
  return list.filter((m) => m.startsWith("NativeModule ")).map((m) => m.slice("NativeModule ".length));
}

// What gRPC (http2), the kube client (https, tls), the dev plane (http, dns) and compression (zlib) need.
const NETWORK = ["http", "https", "http2", "tls", "zlib", "dns"];

describe("start-up loads only what the command uses", () => {
  it.each([["--version"], ["--help"], ["config"], ["config", "--help"]])("istio-vm %s", (...args) => {
    expect(builtinsLoaded(args).filter((m) => NETWORK.includes(m))).toEqual([]);
  });

  it("the composition root builds every port without loading what the ports use (src/main.ts: realContext)", () => {
    const ports = ["child_process", "readline", "os", ...NETWORK];
    expect(builtinsLoaded(["--version"]).filter((m) => ports.includes(m))).toEqual([]);
  });

  // node:assert (yargs' invariant checks, scripts/build.mjs gives it two small functions instead) and
  // node:fs/promises (src/platform/fs.ts reads through node:fs) each pull in several more built-in modules.
  it.each([["--version"], ["config"]])("istio-vm %s loads neither node:assert nor node:fs/promises", (...args) => {
    expect(builtinsLoaded(args).filter((m) => m === "assert" || m === "fs/promises")).toEqual([]);
  });

  // scripts/build.mjs makes the cache in a child process after running a few commands (scripts/warm-cache.mjs); V8
  // turns a cache away silently when it was made for other source or under other flags, and every start would then
  // compile the bundle from source.
  it("this Node accepts the launcher's code cache for the bundle", () => {
    const file = join(CLI, "..", "istio-vm-main.cjs");
    const source = readFileSync(file, "latin1");
    const cache = readFileSync(`${file}.v8`);
    const script = new Script(
      `(function (exports, require, module, __filename, __dirname) { ${source.replace(/^#!/, "//")}\n});`,
      { filename: file, cachedData: cache.subarray(32) },
    );
    expect(script.cachedDataRejected).toBe(false);
  });

  it("a command that talks to a server does load the network stack (the check above can fail)", () => {
    expect(builtinsLoaded(["check", "--help"])).toEqual(expect.arrayContaining(["http2"]));
  });
});
