/**
 * Rotation without restarts (istiod profile): the built agent gets short-lived certificates (12 s) from a dev CA,
 * serves them over SDS, and proxies Envoy's xDS to the dev Pilot (mTLS with its own certificate). The Envoy stand-in
 * gets CDS and LDS through the agent's xDS socket, subscribes to the secrets the clusters name on the SDS socket,
 * and holds each new chain while its PID and hot-restart epoch stay the same, and the proxy's one stream to istiod
 * survives the renewal. Legacy keeps files and hot restart (test/integration/envoy-supervisor).
 */
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import type { CertFixture } from "../support/cert-fixture.js";
import { createCertFixture } from "../support/cert-fixture.js";
import { CLI } from "../support/cli.js";
import { freePort } from "../support/net.js";
import { NotifySocket } from "../support/notify-socket.js";
import { startPilotXds } from "../../src/devplane/pilot-xds.js";
import { ObjectStore } from "../../src/devplane/store.js";

const FAKE_ENVOY = fileURLToPath(new URL("../fixtures/fake-envoy.mjs", import.meta.url));

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !/^\S+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface CertsView {
  certificates: { secret?: string; version?: string; cert_chain: { serial_number: string; path: string }[] }[];
}

describe("SDS: a renewal reaches the stand-in without a restart", () => {
  it("the stand-in's /certs shows the new serial after a renewal; its PID and epoch are unchanged", async () => {
    const ca: CertFixture = await createCertFixture({ protocol: "istiod", server: { defaultTtlMs: 12_000 } });
    cleanups.push(() => ca.close());
    const store = new ObjectStore();
    store.create("services", {
      metadata: { name: "hello", namespace: "vmns" },
      spec: { clusterIP: "10.96.1.1", ports: [{ name: "http", port: 80 }] },
    });
    const serving = await ca.mesh.issueKeyPair({ dnsNames: ["istiod.istio-system.svc"] });
    const tls = { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: ca.mesh.rootCertPem };
    let pilot = await startPilotXds({ store, tls });
    cleanups.push(() => pilot.close());
    const root = mkdtempSync(join(tmpdir(), "istio-vm-sds-agent-"));
    const records = join(root, "records");
    for (const d of [records, join(root, "dev/shm"), join(root, "etc/certs"), join(root, "var/lib/istio/envoy")]) {
      mkdirSync(d, { recursive: true });
    }
    mkdirSync(join(root, "var/lib/istio/tokens"), { recursive: true });
    writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    copyFileSync(join(ca.dir, "root-cert.pem"), join(root, "etc/certs/root-cert.pem"));
    await ca.writeToken();
    copyFileSync(ca.tokenFile, join(root, "var/lib/istio/tokens/istio-token"));
    const statusPort = await freePort();
    const adminPort = await freePort();
    writeFileSync(
      join(root, "var/lib/istio/envoy/cluster.env"),
      "ISTIO_CONTROL_PLANE=istiod\nPOD_NAMESPACE=vmns\nSERVICE_ACCOUNT=vm-sa\n",
    );
    writeFileSync(
      join(root, "var/lib/istio/envoy/sidecar.env"),
      [
        "ISTIO_SVC_IP=10.0.0.5",
        // No interception: this runs in the machine's own network namespace.
        "ISTIO_AGENT_COMPONENTS=certificates,envoy",
        `CA_ADDR=127.0.0.1:${ca.server.port}`,
        `DISCOVERY_ADDRESS=${pilot.address}`,
        // The CA's default lifetime (12 s, backdated 60 s): renewal 6 s before NotAfter.
        "SECRET_TTL=0",
        "SECRET_GRACE_PERIOD_RATIO=0.0834",
        "SECRET_GRACE_PERIOD_RATIO_JITTER=0",
        `STATUS_PORT=${statusPort}`,
        `ENVOY_BINARY=${FAKE_ENVOY}`,
        `ENVOY_ADMIN_PORT=${adminPort}`,
        "ENVOY_STATS_PORT=0",
        "ENVOY_STATUS_PORT=0",
        "ENVOY_USER=root",
        "ENVOY_DRAIN_DURATION=1s",
        "ENVOY_PARENT_SHUTDOWN_DURATION=2s",
        "",
      ].join("\n"),
    );
    const notify = new NotifySocket(join(root, "notify.sock"));
    const child: ChildProcess = spawn(process.execPath, [CLI, "agent"], {
      env: {
        PATH: process.env["PATH"],
        ISTIO_VM_ROOT: root,
        NOTIFY_SOCKET: notify.path,
        FAKE_ENVOY_SOCKET_DIR: join(root, "dev/shm"),
        FAKE_ENVOY_RECORD_DIR: records,
      },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    const standIns = (): number[] =>
      readdirSync(records)
        .filter((n) => /^\d+\.json$/.test(n))
        .map((n) => Number(n.slice(0, -5)));
    cleanups.push(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      for (const pid of standIns()) if (alive(pid)) process.kill(pid, "SIGKILL");
      notify.close();
      if (process.env["SDS_DEBUG"] !== undefined)
        writeFileSync(process.env["SDS_DEBUG"], `${stderr}\n${JSON.stringify(notify.messages)}`);
      rmSync(root, { recursive: true, force: true });
    });

    const admin = async <T>(path: string): Promise<T> =>
      (await (await fetch(`http://127.0.0.1:${adminPort}${path}`)).json()) as T;
    const metrics = async (): Promise<string> => await (await fetch(`http://127.0.0.1:${statusPort}/metrics`)).text();
    const heldSerial = async (): Promise<string | undefined> => {
      try {
        const view = await admin<CertsView>("/certs");
        return view.certificates.find((c) => c.secret === "default")?.cert_chain[0]?.serial_number;
      } catch {
        return undefined;
      }
    };
    const storeSerial = (): string =>
      new X509Certificate(readFileSync(join(root, "etc/certs/cert-chain.pem"))).serialNumber.toLowerCase();

    try {
      await notify.waitForStatus(
        /^ready: .*sds v[0-9a-f]+ acked by \d\/\d.*xds proxy: istiod \S+ answered CDS, LDS.*envoy epoch 0 \(pid \d+\) ready/,
      );
      const [pid] = standIns();
      expect(pid).toBeDefined();
      const first = await until("the stand-in holds a chain", heldSerial);
      expect(first).toBe(storeSerial());
      const view = await admin<CertsView>("/certs");
      expect(view.certificates.find((c) => c.secret === "default")?.cert_chain[0]?.path).toBe("<inline>");

      // The next renewal (about 6 s after the first certificate) is pushed to the open stream.
      const renewed = await until("a new serial in the stand-in", async () => {
        const serial = await heldSerial();
        return serial !== undefined && serial !== first ? serial : undefined;
      });
      expect(renewed).toBe(storeSerial());
      expect(standIns()).toEqual([pid]);
      expect(alive(pid ?? 0)).toBe(true);
      const info = await admin<{ command_line_options: { restart_epoch: number } }>("/server_info");
      expect(info.command_line_options.restart_epoch).toBe(0);
      const text = await metrics();
      expect(text).toMatch(/^istio_vm_envoy_epoch 0$/m);
      expect(text).not.toMatch(/^istio_vm_envoy_restarts_total/m);
      expect(text).toMatch(/^istio_vm_sds_pushes_total\{reason="renewal"\} [1-9]/m);
      expect(text).toMatch(/^istio_vm_sds_acks_total [2-9]/m);
      expect(text).not.toMatch(/^istio_vm_sds_nacks_total [1-9]/m);
      expect(text).toMatch(/^istio_vm_sds_streams 2$/m);
      // Envoy's xDS went through the agent on one stream that outlived the renewal.
      expect(text).toMatch(/^istio_vm_xds_proxy_envoy_streams_total 1$/m);
      expect(text).toMatch(/^istio_vm_xds_proxy_upstream_streams_total 1$/m);
      expect(text).not.toMatch(/^istio_vm_xds_proxy_reconnects_total [1-9]/m);
      expect(text).toMatch(/^istio_vm_xds_proxy_upstream_connected 1$/m);
      expect(text).toMatch(/^istio_vm_xds_proxy_messages_total\{direction="downstream",type="CDS"\} [1-9]/m);
      const [connection, ...more] = pilot.connections();
      expect(more).toEqual([]);
      expect(connection?.authenticatedBy).toBe("certificate");
      expect(connection?.identities).toEqual([ca.identity]);
      expect(connection?.node.user_agent_name).toBe("envoy");
      expect(connection?.node.metadata["NAMESPACE"]).toBe("vmns");
      // Its config dump lists the secrets as Envoy's does, the private key redacted.
      const dump = await admin<{
        configs: {
          "@type": string;
          dynamic_active_secrets?: { name: string; secret: object }[];
          dynamic_active_clusters?: { cluster: { name: string } }[];
        }[];
      }>("/config_dump");
      const clusters = dump.configs.find((c) => c["@type"].endsWith("ClustersConfigDump"))?.dynamic_active_clusters;
      expect(clusters?.map((c) => c.cluster.name)).toEqual(["outbound|80||hello.vmns.svc.cluster.local"]);
      const active = dump.configs.find((c) => c["@type"].endsWith("SecretsConfigDump"))?.dynamic_active_secrets ?? [];
      expect(active.map((a) => a.name).sort()).toEqual(["ROOTCA", "default"]);
      expect(JSON.stringify(active)).toContain('"private_key":{"inline_string":"[redacted]"}');
      expect(JSON.stringify(dump)).not.toContain("PRIVATE KEY");
      // No key file is named in what Envoy was started with, and it dials no control plane itself.
      const bootstrap = readFileSync(join(root, "etc/istio/proxy/envoy-rev0.json"), "utf8");
      expect(bootstrap).not.toContain("key.pem");
      const parsed = JSON.parse(bootstrap) as { static_resources: { clusters: { name: string }[] } };
      const xdsCluster = parsed.static_resources.clusters.find((c) => c.name === "xds-grpc");
      expect(JSON.stringify(xdsCluster)).toContain(`"pipe":{"path":"${join(root, "run/istio-vm/xds/XDS")}"}`);

      // istiod really stops: the agent says so, Envoy keeps running on what it has.
      const port = pilot.port;
      await pilot.close();
      await notify.waitForStatus(/^degraded: .*xds proxy: istiod \S+ (unreachable|waiting)/);
      // istiod comes back (on the same address) with a new service: the stand-in re-subscribed through the proxy.
      store.create("services", {
        metadata: { name: "later", namespace: "vmns" },
        spec: { clusterIP: "10.96.1.2", ports: [{ name: "http", port: 8080 }] },
      });
      pilot = await startPilotXds({ store, tls, port });
      const names = await until("the stand-in holds the new cluster", async () => {
        const again = await admin<{
          configs: { "@type": string; dynamic_active_clusters?: { cluster: { name: string } }[] }[];
        }>("/config_dump");
        const list = again.configs
          .find((c) => c["@type"].endsWith("ClustersConfigDump"))
          ?.dynamic_active_clusters?.map((c) => c.cluster.name);
        return list?.includes("outbound|8080||later.vmns.svc.cluster.local") === true ? list : undefined;
      });
      expect(names).toHaveLength(2);
      await notify.waitForStatus(/^ready: .*xds proxy: istiod \S+ answered CDS, LDS/);
      const after = await metrics();
      expect(after).toMatch(/^istio_vm_xds_proxy_reconnects_total [1-9]/m);
      expect(after).toMatch(/^istio_vm_xds_proxy_envoy_streams_total [2-9]/m);
      expect(standIns()).toEqual([pid]);
      expect(pilot.connections()).toHaveLength(1);
    } catch (error) {
      throw new Error(`${String(error)}\nagent stderr:\n${stderr.slice(-4000)}`, { cause: error });
    }
  });
});
