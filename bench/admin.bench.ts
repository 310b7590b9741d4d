/**
 * Issue 3's numbers: API requests and wall time to produce cluster.env + kubedns + certs, for dev clusters with
 * 10, 1 000 and 10 000 extra Services, both profiles. The generators read the few objects they need by name, so the
 * request count must be the same at every size; the bench exits 1 when it is not.
 *
 * Runs in-process against `istio-vm dev`'s Kubernetes API over HTTPS (client-certificate kubeconfig), through the
 * same HTTP client the CLI uses, with a counting wrapper around it.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDevPlane } from "../src/devplane/dev-plane.js";
import { parseCidr } from "../src/devplane/ip-allocator.js";
import type { KubeClient, KubeObjectList, RequestOptions } from "../src/kube/client.js";
import { createKubeClient } from "../src/kube/connect.js";
import { discoverServiceCidr, planClusterEnv, readMeshSettings } from "../src/kube/cluster-env.js";
import { DEFAULT_LB_OPTIONS, kubednsTargets, planKubedns, resolveLoadBalancers } from "../src/kube/kubedns.js";
import { fetchIstiodBootstrap, fetchLegacyCerts } from "../src/kube/bootstrap-certs.js";
import { detectProfile } from "../src/kube/profile.js";
import { systemClock } from "../src/platform/clock.js";
import { nodeFileSystem } from "../src/platform/fs.js";
import { silentLogger } from "../src/platform/logger.js";
import { nodeProcessRunner } from "../src/platform/process.js";

const SIZES = [10, 1000, 10_000];
const RUNS = 7;

function row(table: string, name: string, value: string, note?: string): void {
  process.stdout.write(`${JSON.stringify({ table, case: name, value, ...(note === undefined ? {} : { note }) })}\n`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? NaN;
}

class CountingKubeClient implements KubeClient {
  requests = 0;
  constructor(private readonly inner: KubeClient) {}
  get namespace(): string {
    return this.inner.namespace;
  }
  get server(): string {
    return this.inner.server;
  }
  get<T>(path: string, options?: RequestOptions): Promise<T> {
    this.requests++;
    return this.inner.get<T>(path, options);
  }
  list<T>(path: string, options?: RequestOptions): Promise<KubeObjectList<T>> {
    this.requests++;
    return this.inner.list<T>(path, options);
  }
  create<T>(path: string, body: unknown, options?: RequestOptions): Promise<T> {
    this.requests++;
    return this.inner.create<T>(path, body, options);
  }
  update<T>(path: string, body: unknown, options?: RequestOptions): Promise<T> {
    this.requests++;
    return this.inner.update<T>(path, body, options);
  }
  delete(path: string, options?: RequestOptions): Promise<void> {
    this.requests++;
    return this.inner.delete(path, options);
  }
}

/** What `istio-vm cluster-env`, `dnsmasq` and `certs` do, in sequence. */
async function generateAll(client: KubeClient): Promise<void> {
  const { profile } = await detectProfile(client, "istio-system");
  const cidr = await discoverServiceCidr(client, { probeNamespace: "default" });
  const mesh = profile === "istiod" ? await readMeshSettings(client, "istio-system") : {};
  planClusterEnv({
    profile,
    serviceCidr: cidr.value,
    systemNamespace: "istio-system",
    authPolicy: "MUTUAL_TLS",
    ...(profile === "istiod"
      ? {
          workload: {
            namespace: "default",
            serviceAccount: "default",
            trustDomain: mesh.trustDomain ?? "cluster.local",
            clusterId: mesh.clusterId ?? "Kubernetes",
          },
        }
      : {}),
  });
  const lbs = await resolveLoadBalancers(client, kubednsTargets(profile, DEFAULT_LB_OPTIONS), {
    clock: systemClock,
    waitMs: 0,
    intervalMs: 1000,
  });
  planKubedns(profile, lbs.addresses, "istio-system");
  const now = Date.now();
  if (profile === "legacy") {
    await fetchLegacyCerts(client, {
      serviceAccount: "default",
      namespace: "default",
      all: true,
      trustDomain: "cluster.local",
      now,
    });
  } else {
    await fetchIstiodBootstrap(client, {
      serviceAccount: "default",
      namespace: "default",
      audience: "istio-ca",
      tokenSeconds: 3600,
      now,
    });
  }
}

async function measure(profile: "legacy" | "istiod", extra: number): Promise<{ requests: number; ms: number }> {
  const plane = await startDevPlane({
    profile,
    listen: [{ host: "127.0.0.1", port: 0 }],
    serviceCidrs: [parseCidr("10.96.0.0/12")],
    // Legacy-era clusters have no ServiceCIDR API: the CIDR comes from the dry-run probe there.
    serviceCidrApi: profile === "istiod",
    lbIpBase: "10.128.0.6",
    lbDelayMs: 0,
    trustDomain: "cluster.local",
    workloadCertTtlMs: 19 * 3600_000,
    services: [],
    logger: silentLogger,
  });
  const dir = mkdtempSync(join(tmpdir(), "istio-vm-admin-bench-"));
  try {
    for (let i = 0; i < extra; i++) {
      plane.context.store.create("services", {
        apiVersion: "v1",
        kind: "Service",
        metadata: { name: `svc-${i}`, namespace: i % 2 === 0 ? "default" : "istio-system" },
        spec: { type: "ClusterIP", ports: [{ name: "http", port: 80 }] },
      });
    }
    const kubeconfig = join(dir, "kubeconfig");
    writeFileSync(kubeconfig, plane.kubeconfig(), { mode: 0o600 });
    const inner = await createKubeClient({
      kubeconfig,
      env: { KUBECONFIG: kubeconfig, HOME: dir },
      fs: nodeFileSystem,
      runner: nodeProcessRunner,
      logger: silentLogger,
    });
    const samples: number[] = [];
    const counts = new Set<number>();
    for (let run = 0; run < RUNS; run++) {
      const client = new CountingKubeClient(inner);
      const start = performance.now();
      await generateAll(client);
      samples.push(performance.now() - start);
      counts.add(client.requests);
    }
    if (counts.size !== 1) throw new Error(`request count varied between runs: ${[...counts].join(", ")}`);
    return { requests: [...counts][0] ?? NaN, ms: median(samples) };
  } finally {
    await plane.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  let failed = false;
  for (const profile of ["legacy", "istiod"] as const) {
    const counts: number[] = [];
    for (const size of SIZES) {
      const { requests, ms } = await measure(profile, size);
      counts.push(requests);
      row(
        "admin",
        `${profile}: cluster.env + kubedns + certs, ${size.toLocaleString("en-US")} services`,
        `${requests} API requests, ${ms.toFixed(1)} ms`,
        `median of ${RUNS}, dev API over TLS on loopback`,
      );
    }
    if (new Set(counts).size !== 1) {
      process.stderr.write(`${profile}: the request count grows with the number of services: ${counts.join(", ")}\n`);
      failed = true;
    }
  }
  process.exitCode = failed ? 1 : 0;
}

main().catch((error: unknown) => {
  process.stderr.write(
    `admin bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exitCode = 1;
});
