/**
 * No Envoy outlives the agent, whichever way the agent ends. A driver process (test/fixtures/spawner-driver.ts,
 * bundled here) runs the real process-group spawner like the agent does and starts the stand-in; then the driver
 * throws, exits, or is SIGKILLed. The stand-in records how it ended, which shows which mechanism acted: the exit
 * handler SIGKILLs at once (no exit record), the watchdog SIGTERMs first (exit record "SIGTERM") and SIGKILLs an
 * Envoy that ignores it.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort } from "../support/net.js";

const FAKE_ENVOY = fileURLToPath(new URL("../fixtures/fake-envoy.mjs", import.meta.url));
const DRIVER_SOURCE = fileURLToPath(new URL("../fixtures/spawner-driver.ts", import.meta.url));

let dir = "";
let driver = "";
const started: number[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "istio-vm-orphans-"));
  driver = join(dir, "driver.mjs");
  await build({
    entryPoints: [DRIVER_SOURCE],
    outfile: driver,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    logLevel: "warning",
  });
});

afterAll(() => {
  for (const pid of started) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone, as it should be
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

async function until(what: string, probe: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function runDriver(
  mode: string,
  control: unknown = {},
): Promise<{ driver: ChildProcess; envoyPid: number; records: string }> {
  const records = mkdtempSync(join(dir, "case-"));
  const bootstrap = join(records, "bootstrap.json");
  writeFileSync(
    bootstrap,
    JSON.stringify({ admin: { address: { socket_address: { address: "127.0.0.1", port_value: await freePort() } } } }),
  );
  writeFileSync(join(records, "control.json"), JSON.stringify(control));
  const child = spawn(process.execPath, [driver, mode, FAKE_ENVOY, bootstrap], {
    env: {
      PATH: process.env["PATH"],
      FAKE_ENVOY_SOCKET_DIR: records,
      FAKE_ENVOY_RECORD_DIR: records,
      FAKE_ENVOY_CONTROL: join(records, "control.json"),
    },
    stdio: ["ignore", "pipe", "ignore"],
  });
  if (child.pid !== undefined) started.push(child.pid);
  const envoyPid = await new Promise<number>((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /ready (\d+)/.exec(out);
      if (m !== null) resolve(Number(m[1]));
    });
    child.on("exit", () => {
      reject(new Error(`driver exited before starting the stand-in: ${out}`));
    });
  });
  started.push(envoyPid);
  // The stand-in is up (its start record is written before anything else).
  await until("the stand-in's record", () => existsSync(join(records, `${envoyPid}.json`)));
  return { driver: child, envoyPid, records };
}

function exitRecord(records: string, pid: number): { reason: string } | undefined {
  const path = join(records, `${pid}.exit.json`);
  return existsSync(path) ? (JSON.parse(readFileSync(path, "utf8")) as { reason: string }) : undefined;
}

describe("no Envoy outlives the agent", () => {
  it("an uncaught exception: the exit handler SIGKILLs the group at once", async () => {
    const { driver: d, envoyPid, records } = await runDriver("throw");
    await new Promise((r) => d.on("exit", r));
    await until("the stand-in gone", () => !alive(envoyPid));
    expect(exitRecord(records, envoyPid)).toBeUndefined();
  });

  it("process.exit: the exit handler SIGKILLs the group at once", async () => {
    const { driver: d, envoyPid, records } = await runDriver("exit");
    await new Promise((r) => d.on("exit", r));
    await until("the stand-in gone", () => !alive(envoyPid));
    expect(exitRecord(records, envoyPid)).toBeUndefined();
  });

  it("SIGKILL of the agent: the watchdog SIGTERMs the group", async () => {
    const { driver: d, envoyPid, records } = await runDriver("wait");
    d.kill("SIGKILL");
    await until("the stand-in gone", () => !alive(envoyPid));
    expect(exitRecord(records, envoyPid)?.reason).toBe("SIGTERM");
  });

  it("SIGKILL of the agent with an Envoy that ignores SIGTERM: the watchdog SIGKILLs it after 5 s", async () => {
    const { driver: d, envoyPid, records } = await runDriver("wait", { epochs: { "*": { ignoreSigterm: true } } });
    d.kill("SIGKILL");
    await until("the stand-in gone", () => !alive(envoyPid));
    expect(exitRecord(records, envoyPid)).toBeUndefined();
  });
});
