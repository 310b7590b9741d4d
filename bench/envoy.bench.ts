/**
 * Issue 6's number (legacy profile): from a certificate change to the new Envoy epoch ready, with the stand-in (test/fixtures/
 * fake-envoy.mjs) as real processes through the real supervisor and spawner. Three cases: the hot restart alone
 * (no debounce), the `certificates-changed` event with the production 2 s debounce, and a change on disk nobody
 * announces (the production 5 s poll + 2 s debounce). The stand-in's start-up is Node's, not Envoy's: real Envoy
 * adds its own initialisation (and waits up to 15 s for the first CDS/LDS from the control plane).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../src/config/load.js";
import type { SupervisorOptions } from "../src/envoy/supervisor.js";
import { EnvoySupervisor } from "../src/envoy/supervisor.js";
import { createChildSpawner } from "../src/platform/child.js";
import { systemClock } from "../src/platform/clock.js";
import { nodeFileSystem } from "../src/platform/fs.js";
import { nodeLinkFileSystem } from "../src/platform/links.js";
import { nodeProcessRunner } from "../src/platform/process.js";
import { systemUsers } from "../src/platform/users.js";
import { nodeHttpClient } from "../src/platform/http.js";
import { silentLogger } from "../src/platform/logger.js";
import { freePort } from "../test/support/net.js";

const FAKE_ENVOY = join(process.cwd(), "test/fixtures/fake-envoy.mjs");

function row(table: string, name: string, value: string, note?: string): void {
  process.stdout.write(`${JSON.stringify({ table, case: name, value, ...(note === undefined ? {} : { note }) })}\n`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

async function until(probe: () => boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!probe()) {
    if (performance.now() > deadline) throw new Error("timed out");
    await new Promise((r) => setTimeout(r, 2));
  }
}

async function measure(
  name: string,
  runs: number,
  tuning: Partial<SupervisorOptions>,
  trigger: (s: EnvoySupervisor, certs: string, run: number) => void,
): Promise<number[]> {
  const root = mkdtempSync(join(tmpdir(), "istio-vm-envoy-bench-"));
  const certs = join(root, "etc/certs");
  const shm = join(root, "dev/shm");
  for (const d of [certs, shm, join(root, "var/lib/istio/envoy")]) mkdirSync(d, { recursive: true });
  writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
  for (const f of ["cert-chain.pem", "key.pem", "root-cert.pem"]) writeFileSync(join(certs, f), `${f} 0`);
  // The legacy profile: its Envoy reads the files and hot-restarts on a renewal (istiod's gets them over SDS,
  // bench/sds.bench.ts).
  writeFileSync(join(root, "var/lib/istio/envoy/cluster.env"), "ISTIO_CONTROL_PLANE=legacy\n");
  writeFileSync(
    join(root, "var/lib/istio/envoy/sidecar.env"),
    [
      "ISTIO_SVC_IP=10.0.0.5",
      `ENVOY_BINARY=${FAKE_ENVOY}`,
      `ENVOY_ADMIN_PORT=${await freePort()}`,
      "ENVOY_STATS_PORT=0",
      `ENVOY_USER=${process.getuid?.() === 0 ? "root" : "nobody-bench"}`,
      "ENVOY_DRAIN_DURATION=1s",
      "ENVOY_PARENT_SHUTDOWN_DURATION=2s",
      "",
    ].join("\n"),
  );
  const loaded = await loadConfig({ env: { ISTIO_VM_ROOT: root }, fs: nodeFileSystem });
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
    env: { PATH: process.env["PATH"], FAKE_ENVOY_SOCKET_DIR: shm, FAKE_ENVOY_LISTEN: `127.0.0.1:${await freePort()}` },
    uid: process.getuid?.() ?? 0,
    readyPollMs: 10,
    ...tuning,
  });
  const samples: number[] = [];
  try {
    await supervisor.start(new AbortController().signal);
    for (let run = 1; run <= runs; run++) {
      // One epoch at a time: the previous parent has exited.
      await until(() => supervisor.status().epochsRunning === 1);
      const target = (supervisor.status().epoch ?? 0) + 1;
      for (const f of ["cert-chain.pem", "key.pem"]) writeFileSync(join(certs, f), `${f} ${run}`);
      const start = performance.now();
      trigger(supervisor, certs, run);
      await until(() => supervisor.status().epoch === target && supervisor.status().ready);
      samples.push(performance.now() - start);
    }
  } finally {
    await supervisor.stop();
    rmSync(root, { recursive: true, force: true });
  }
  process.stderr.write(`${name}: ${samples.map((s) => s.toFixed(0)).join(", ")} ms\n`);
  return samples;
}

const hot = await measure("hot restart", 7, { debounceMs: 0, certPollMs: 0 }, (s) => {
  s.certificatesChanged();
});
row(
  "envoy",
  "legacy: certificate event → new epoch ready, hot restart alone (stand-in)",
  `${median(hot).toFixed(0)} ms`,
  "median of 7, no debounce",
);
const event = await measure("event", 3, { certPollMs: 0 }, (s) => {
  s.certificatesChanged();
});
row(
  "envoy",
  "legacy: certificates-changed event → new epoch ready (2 s debounce)",
  `${median(event).toFixed(0)} ms`,
  "median of 3",
);
const disk = await measure("disk", 3, {}, () => undefined);
row(
  "envoy",
  "legacy: certificate files changed on disk, no event → new epoch ready",
  `${median(disk).toFixed(0)} ms`,
  "median of 3; 5 s poll + 2 s debounce",
);
