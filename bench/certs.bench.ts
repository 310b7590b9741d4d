/**
 * Issue 4's and 14's numbers: wall and CPU time of one certificate renewal (new key + CSR + CA call over TLS +
 * verification + atomic pair replacement in the store, 4 fsyncs) for EC P-256 and RSA-2048 keys, against the dev CA
 * (both protocols), with the phases measured separately. The dev CA runs in this process, so the CPU time includes
 * the CA's signing (one ECDSA signature with the dev root) and the server's end of the connection; the note says so.
 *
 * Each renewal row has its baseline in the same run: the agent's way (the CA connection kept between renewals, as
 * src/certs/setup.ts builds it) against a new TLS connection for every renewal (as before issue 14), alternating
 * one renewal of each, medians of each.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCaClient, keptCaConnection } from "../src/certs/ca-client.js";
import type { CaProtocol } from "../src/certs/ca-client.js";
import { createCsr } from "../src/certs/csr.js";
import type { WorkloadKeyType } from "../src/certs/keys.js";
import { generateWorkloadKey } from "../src/certs/keys.js";
import type { RenewContext } from "../src/certs/renew.js";
import { renewOnce } from "../src/certs/renew.js";
import { CertStore } from "../src/certs/store.js";
import { chainWithoutRoots } from "../src/certs/verify.js";
import { startDevCaServer } from "../src/devplane/ca-server.js";
import { createMeshCa } from "../src/devplane/mesh-ca.js";
import { systemClock } from "../src/platform/clock.js";
import { nodeFileSystem } from "../src/platform/fs.js";
import { nodeLinkFileSystem } from "../src/platform/links.js";

function row(fields: { case: string; value: string; baseline?: string; ratio?: string; note?: string }): void {
  process.stdout.write(`${JSON.stringify({ table: "certs", ...fields })}\n`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

const ms = (n: number): string => `${n.toFixed(1)} ms`;

async function main(): Promise<void> {
  const mesh = await createMeshCa();
  const server = await startDevCaServer({ mesh });
  const identity = mesh.spiffeId("bench", "vm");
  const dir = mkdtempSync(join(tmpdir(), "istio-vm-bench-certs-"));
  try {
    writeFileSync(join(dir, "root-cert.pem"), mesh.rootCertPem);
    const installed = await mesh.issueKeyPair({ identity });
    writeFileSync(join(dir, "key.pem"), installed.keyPem, { mode: 0o600 });
    writeFileSync(join(dir, "cert-chain.pem"), installed.chainPem);
    const store = new CertStore({ dir, fs: nodeFileSystem, links: nodeLinkFileSystem });

    for (const protocol of ["istiod", "legacy"] as CaProtocol[]) {
      const client = (rootPem: string) =>
        createCaClient(protocol, {
          address: { host: "127.0.0.1", port: server.port },
          serverName: protocol === "legacy" ? "istio-ca" : "istiod.istio-system.svc",
          rootPem,
          timeoutMs: 10_000,
          clusterId: "Kubernetes",
        });
      for (const type of ["EC", "RSA"] as WorkloadKeyType[]) {
        const runs = type === "EC" ? 40 : 15;
        const kept = keptCaConnection(client);
        const base = {
          store,
          protocol,
          clock: systemClock,
          fs: nodeFileSystem,
          identity,
          keySpec: { type },
          ttlMs: 24 * 3600_000,
          tokenFile: join(dir, "no-token"),
        };
        const keeping: RenewContext = {
          ...base,
          connect: (rootPem) => kept.connect(rootPem),
          close: () => {
            kept.close();
          },
        };
        // The baseline: a client of its own for every renewal, closed after it (a new TLS connection each time).
        let fresh: ReturnType<typeof client> | undefined;
        const dialing: RenewContext = {
          ...base,
          connect: (rootPem) => {
            fresh?.close();
            fresh = client(rootPem);
            return fresh;
          },
        };
        await renewOnce(keeping); // warm-up: JIT
        await renewOnce(dialing);
        const walls = { kept: [] as number[], dialing: [] as number[] };
        const cpus = { kept: 0, dialing: 0 };
        for (let i = 0; i < runs; i++) {
          for (const [name, context] of [
            ["kept", keeping],
            ["dialing", dialing],
          ] as const) {
            const cpu0 = process.cpuUsage();
            const t0 = performance.now();
            await renewOnce(context);
            walls[name].push(performance.now() - t0);
            const cpu = process.cpuUsage(cpu0);
            cpus[name] += (cpu.user + cpu.system) / 1000;
          }
        }
        fresh?.close();
        const label = `${protocol} ${type === "EC" ? "EC P-256" : "RSA-2048"}`;
        const wall = { kept: median(walls.kept), dialing: median(walls.dialing) };
        row({
          case: `one renewal, wall (${label}): CA connection kept vs a new one per renewal`,
          value: ms(wall.kept),
          baseline: ms(wall.dialing),
          ratio: `${(wall.kept / wall.dialing).toFixed(2)}×`,
          note: `median of ${runs} each, interleaved; keygen + CSR + CA call + verify + write (4 fsyncs)${type === "EC" ? "; goal ≤ 50 ms" : ""}`,
        });
        row({
          case: `one renewal, CPU (${label}): CA connection kept vs a new one per renewal`,
          value: ms(cpus.kept / runs),
          baseline: ms(cpus.dialing / runs),
          ratio: `${(cpus.kept / cpus.dialing).toFixed(2)}×`,
          note: "user+system per renewal; includes the in-process dev CA's signing and the server's end",
        });

        if (protocol !== "istiod") {
          kept.close();
          continue;
        }
        // The phases, for the istiod protocol (the legacy call differs only in its messages), connection kept.
        const phases = { keygen: [] as number[], csr: [] as number[], call: [] as number[], store: [] as number[] };
        for (let i = 0; i < runs; i++) {
          const current = await store.read();
          if (current === undefined) throw new Error("no pair");
          let t = performance.now();
          const key = await generateWorkloadKey({ type });
          phases.keygen.push(performance.now() - t);
          t = performance.now();
          const csrPem = await createCsr(key, identity);
          phases.csr.push(performance.now() - t);
          t = performance.now();
          const certs = await kept.connect(mesh.rootCertPem).sign({
            csrPem,
            ttlMs: 24 * 3600_000,
            credential: { kind: "mtls", ...current },
          });
          phases.call.push(performance.now() - t);
          t = performance.now();
          await store.accept(
            { keyPem: key.pem, chainPem: chainWithoutRoots(certs, mesh.rootCertPem) },
            { expectedIdentity: identity, now: Date.now() },
          );
          phases.store.push(performance.now() - t);
        }
        kept.close();
        row({
          case: `phases (${type === "EC" ? "EC" : "RSA"}): keygen / CSR / CA call / verify+write`,
          value: `${ms(median(phases.keygen))} / ${ms(median(phases.csr))} / ${ms(median(phases.call))} / ${ms(median(phases.store))}`,
          note: "medians; the CA call over the kept connection includes the CA's signing; write = 4 fsyncs",
        });
      }
    }
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`${String(error)}\n`);
  process.exit(1);
});
