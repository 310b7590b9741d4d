/**
 * Crash safety of the certificate store: a process replacing the pair over and over (and `istio-vm certs renew`
 * itself) is killed with SIGKILL at random points; after every kill the key and certificate Envoy would read from
 * /etc/certs/{key.pem,cert-chain.pem} are complete and belong together, and the chain still verifies.
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { X509Certificate, createPrivateKey } from "node:crypto";
import { mkdir, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { build } from "esbuild";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { verifyPair } from "../../src/certs/verify.js";
import type { CertFixture } from "../support/cert-fixture.js";
import { NAMESPACE, SERVICE_ACCOUNT, createCertFixture } from "../support/cert-fixture.js";
import { CLI } from "../support/cli.js";

let fixture: CertFixture;
let writer: string;
let pairsFile: string;
const children = new Set<ChildProcess>();

beforeAll(async () => {
  fixture = await createCertFixture({ protocol: "legacy" });
  writer = join(fixture.dir, "..", `cert-store-writer-${process.pid}.cjs`);
  await build({
    entryPoints: [new URL("../fixtures/cert-store-writer.ts", import.meta.url).pathname],
    outfile: writer,
    bundle: true,
    platform: "node",
    target: "node20",
    format: "cjs",
    logLevel: "warning",
  });
  const pairs = [];
  for (let i = 0; i < 4; i++) pairs.push(await fixture.mesh.issueKeyPair({ identity: fixture.identity }));
  pairsFile = join(fixture.dir, "..", `cert-pairs-${process.pid}.json`);
  await writeFile(pairsFile, JSON.stringify(pairs.map((p) => ({ keyPem: p.keyPem, chainPem: p.chainPem }))));
});

afterAll(async () => {
  for (const child of children) child.kill("SIGKILL");
  await fixture.close();
  await rm(writer, { force: true });
  await rm(pairsFile, { force: true });
});

/** Reads the pair by the paths Envoy uses and checks it is whole, matching and valid. */
async function assertConsistentPair(dir: string): Promise<void> {
  const keyPem = await readFile(join(dir, "key.pem"), "utf8");
  const chainPem = await readFile(join(dir, "cert-chain.pem"), "utf8");
  const cert = new X509Certificate(chainPem);
  expect(cert.checkPrivateKey(createPrivateKey(keyPem))).toBe(true);
  verifyPair({
    keyPem,
    chainPem,
    rootPem: fixture.mesh.rootCertPem,
    expectedIdentity: fixture.identity,
    now: Date.now(),
  });
}

function spawnTracked(command: string, args: readonly string[], env?: NodeJS.ProcessEnv): ChildProcess {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], ...(env === undefined ? {} : { env }) });
  children.add(child);
  child.on("exit", () => children.delete(child));
  return child;
}

function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else
      child.once("exit", () => {
        resolve();
      });
  });
}

function waitForLine(child: ChildProcess, pattern: RegExp): Promise<void> {
  return new Promise((resolve, reject) => {
    let buffer = "";
    child.stdout?.on("data", (chunk: Buffer) => {
      buffer += chunk.toString();
      if (pattern.test(buffer)) resolve();
    });
    child.once("exit", (code) => {
      reject(new Error(`writer exited (${String(code)}) before ${String(pattern)}`));
    });
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe("certificate store under SIGKILL", () => {
  it("50 kills at random points of a process replacing the pair never leave a partial or mismatched pair", async () => {
    const dir = join(fixture.dir, "kill-store");
    await mkdir(dir);
    await writeFile(join(dir, "root-cert.pem"), fixture.mesh.rootCertPem);
    let writes = 0;
    for (let i = 0; i < 50; i++) {
      if (i % 10 === 0) {
        // Back to the plain files `istio-vm install` writes, so kills also land in the migration to the link layout.
        await rm(join(dir, "key.pem"), { force: true });
        await rm(join(dir, "cert-chain.pem"), { force: true });
        const installed = await fixture.mesh.issueKeyPair({ identity: fixture.identity });
        await writeFile(join(dir, "cert-chain.pem"), installed.chainPem);
        await writeFile(join(dir, "key.pem"), installed.keyPem, { mode: 0o600 });
      } else if (i % 10 === 5) {
        // The `live` -> `pairs/<id>` layout of earlier versions, as an upgrade finds it: kills land in that migration.
        const old = await fixture.mesh.issueKeyPair({ identity: fixture.identity });
        const pair = join(dir, "pairs", `old${String(i)}`);
        await mkdir(pair, { recursive: true });
        await writeFile(join(pair, "key.pem"), old.keyPem, { mode: 0o600 });
        await writeFile(join(pair, "cert-chain.pem"), old.chainPem);
        for (const name of ["live", "key.pem", "cert-chain.pem"]) await rm(join(dir, name), { force: true });
        await symlink(join("pairs", `old${String(i)}`), join(dir, "live"));
        await symlink("live/cert-chain.pem", join(dir, "cert-chain.pem"));
        await symlink("live/key.pem", join(dir, "key.pem"));
      }
      const child = spawnTracked(process.execPath, [writer, dir, pairsFile, fixture.identity]);
      let output = "";
      child.stdout?.on("data", (chunk: Buffer) => (output += chunk.toString()));
      await waitForLine(child, /ready/);
      // One replacement takes tens of ms here (four fsyncs; ten when it migrates): kills land before, during and
      // between them.
      await sleep(Math.random() * 400);
      child.kill("SIGKILL");
      await exited(child);
      writes += (output.match(/wrote/g) ?? []).length;
      await assertConsistentPair(dir);
    }
    // The kills landed while pairs were being replaced, not before the first write.
    expect(writes).toBeGreaterThan(20);
  });

  it("`istio-vm certs renew` killed at random points leaves the old or the new pair, never a mix", async () => {
    const dir = join(fixture.dir, "kill-cli");
    await mkdir(dir);
    await writeFile(join(dir, "root-cert.pem"), fixture.mesh.rootCertPem);
    const installed = await fixture.mesh.issueKeyPair({ identity: fixture.identity });
    await writeFile(join(dir, "cert-chain.pem"), installed.chainPem);
    await writeFile(join(dir, "key.pem"), installed.keyPem, { mode: 0o600 });
    const env = {
      PATH: process.env["PATH"] ?? "/usr/bin:/bin",
      ISTIO_VM_ROOT: dir,
      ISTIO_CONTROL_PLANE: "legacy",
      CA_ADDR: `127.0.0.1:${fixture.server.port}`,
      ISTIOD_SAN: "istio-ca",
      OUTPUT_CERTS: dir,
      POD_NAMESPACE: NAMESPACE,
      SERVICE_ACCOUNT,
    };
    // Full runs tell how long a renewal takes here (the shortest of two: the first also migrates the installed
    // plain files, which costs more fsyncs); kills are spread over that time.
    let duration = Number.POSITIVE_INFINITY;
    for (let i = 0; i < 2; i++) {
      const started = Date.now();
      const full = spawnTracked(process.execPath, [CLI, "certs", "renew"], env);
      await exited(full);
      expect(full.exitCode).toBe(0);
      duration = Math.min(duration, Date.now() - started);
    }
    let completed = 0;
    for (let i = 0; i < 12; i++) {
      const child = spawnTracked(process.execPath, [CLI, "certs", "renew"], env);
      await sleep(duration * (0.2 + Math.random() * 0.8));
      child.kill("SIGKILL");
      await exited(child);
      if (child.exitCode === 0) completed++;
      await assertConsistentPair(dir);
    }
    expect(completed).toBeLessThan(12);
  });
});
