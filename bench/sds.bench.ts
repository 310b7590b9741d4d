/**
 * Issue 15's number (istiod profile): from a renewal (the SDS server's update, what `certificates-changed` calls)
 * to the Envoy stand-in holding the new chain, read back from its admin /certs — no restart. The stand-in
 * (test/fixtures/fake-envoy.mjs) is started by the real supervisor and is a real SDS client of the agent's socket.
 * Compare with bench/envoy.bench.ts, the legacy hot-restart path.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../src/config/load.js";
import { createMeshCa } from "../src/devplane/mesh-ca.js";
import { EnvoySupervisor } from "../src/envoy/supervisor.js";
import { createChildSpawner } from "../src/platform/child.js";
import { systemClock } from "../src/platform/clock.js";
import { nodeFileSystem } from "../src/platform/fs.js";
import { nodeLinkFileSystem } from "../src/platform/links.js";
import { nodeProcessRunner } from "../src/platform/process.js";
import { systemUsers } from "../src/platform/users.js";
import { nodeHttpClient } from "../src/platform/http.js";
import { silentLogger } from "../src/platform/logger.js";
import { SdsServer } from "../src/sds/server.js";
import { sdsSocketPath } from "../src/sds/socket.js";
import { freePort } from "../test/support/net.js";

const FAKE_ENVOY = join(process.cwd(), "test/fixtures/fake-envoy.mjs");
const RUNS = 9;

function row(table: string, name: string, value: string, note?: string): void {
  process.stdout.write(`${JSON.stringify({ table, case: name, value, ...(note === undefined ? {} : { note }) })}\n`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

const root = mkdtempSync(join(tmpdir(), "istio-vm-sds-bench-"));
const shm = join(root, "dev/shm");
for (const d of [shm, join(root, "etc/certs"), join(root, "var/lib/istio/envoy")]) mkdirSync(d, { recursive: true });
writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
writeFileSync(join(root, "var/lib/istio/envoy/cluster.env"), "ISTIO_CONTROL_PLANE=istiod\n");
const adminPort = await freePort();
writeFileSync(
  join(root, "var/lib/istio/envoy/sidecar.env"),
  [
    "ISTIO_SVC_IP=10.0.0.5",
    `ENVOY_BINARY=${FAKE_ENVOY}`,
    `ENVOY_ADMIN_PORT=${adminPort}`,
    "ENVOY_STATS_PORT=0",
    "ENVOY_STATUS_PORT=0",
    `ENVOY_USER=${process.getuid?.() === 0 ? "root" : "nobody-bench"}`,
    "",
  ].join("\n"),
);
const loaded = await loadConfig({ env: { ISTIO_VM_ROOT: root }, fs: nodeFileSystem });
const mesh = await createMeshCa();
const identity = mesh.spiffeId("bench", "bench");
const pairs = await Promise.all(Array.from({ length: RUNS + 1 }, () => mesh.issueKeyPair({ identity })));
const sds = new SdsServer({ socketPath: sdsSocketPath(loaded.values), fs: nodeFileSystem, logger: silentLogger });
await sds.listen();
const secrets = (i: number): { keyPem: string; chainPem: string; rootPem: string } => ({
  keyPem: pairs[i]?.keyPem ?? "",
  chainPem: pairs[i]?.chainPem ?? "",
  rootPem: mesh.rootCertPem,
});
sds.update(secrets(0));
const supervisor = new EnvoySupervisor({
  config: loaded.values,
  extraMetadata: {},
  hostname: "bench",
  fs: nodeFileSystem,
  links: nodeLinkFileSystem,
  users: systemUsers({ ISTIO_VM_ROOT: root }, nodeFileSystem, nodeProcessRunner),
  spawner: createChildSpawner(),
  http: nodeHttpClient,
  clock: systemClock,
  logger: silentLogger,
  env: { PATH: process.env["PATH"], FAKE_ENVOY_SOCKET_DIR: shm },
  uid: process.getuid?.() ?? 0,
  readyPollMs: 10,
  certPollMs: 0,
});

async function heldSerial(): Promise<string | undefined> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/certs`);
  const view = (await res.json()) as { certificates: { secret?: string; cert_chain: { serial_number: string }[] }[] };
  return view.certificates.find((c) => c.secret === "default")?.cert_chain[0]?.serial_number;
}

async function holds(serial: string): Promise<void> {
  const deadline = performance.now() + 30_000;
  while ((await heldSerial()) !== serial) {
    if (performance.now() > deadline) throw new Error(`the stand-in never held ${serial}`);
  }
}

const samples: number[] = [];
try {
  await supervisor.start(new AbortController().signal);
  const { X509Certificate } = await import("node:crypto");
  const serialOf = (i: number): string => new X509Certificate(pairs[i]?.chainPem ?? "").serialNumber.toLowerCase();
  await holds(serialOf(0));
  const pid = supervisor.status().pid;
  for (let run = 1; run <= RUNS; run++) {
    const start = performance.now();
    sds.update(secrets(run));
    await holds(serialOf(run));
    samples.push(performance.now() - start);
  }
  if (supervisor.status().pid !== pid || supervisor.status().epoch !== 0) throw new Error("Envoy was restarted");
} finally {
  await supervisor.stop();
  await sds.close();
  rmSync(root, { recursive: true, force: true });
}
process.stderr.write(`sds: ${samples.map((s) => s.toFixed(1)).join(", ")} ms\n`);
row(
  "envoy",
  "istiod: renewal → stand-in holds the new chain over SDS (no restart)",
  `${median(samples).toFixed(1)} ms`,
  `median of ${RUNS}; polled on its admin /certs; same PID, epoch 0`,
);
