/**
 * The `xds-proxy` component in the agent frame, against the dev Pilot over mTLS with a certificate in OUTPUT_CERTS:
 * STATUS= and /healthz/ready say what the proxy does, and `istio-vm check`'s xds-proxy check reads the same; a
 * certificate whose identity istiod's identity check refuses surfaces in both, with the reason.
 */
import { chmod, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { AdsTestClient, CDS_TYPE, LDS_TYPE } from "../../test/support/ads-client.js";
import { freePort } from "../../test/support/net.js";
import { ManualSignals, RecordingNotifier } from "../../test/fakes/notifier.js";
import { fakePorts } from "../../test/fakes/ports.js";
import { runAgent } from "../agent/agent.js";
import type { CheckDeps } from "../checks/check.js";
import { checkDepsFrom } from "../checks/check.js";
import { xdsProxyCheck } from "../checks/xds-proxy.js";
import { loadConfig } from "../config/load.js";
import type { ConfigValues } from "../config/registry.js";
import { createMeshCa } from "../devplane/mesh-ca.js";
import type { MeshCa } from "../devplane/mesh-ca.js";
import type { PilotXdsServer } from "../devplane/pilot-xds.js";
import { startPilotXds } from "../devplane/pilot-xds.js";
import { ObjectStore } from "../devplane/store.js";
import { systemClock } from "../platform/clock.js";
import { nodeFileSystem } from "../platform/fs.js";
import { nodeHttpClient } from "../platform/http.js";
import { silentLogger } from "../platform/logger.js";
import { nodeProcessRunner } from "../platform/process.js";
import type { SystemPorts } from "../platform/ports.js";
import { buildNodeBlock } from "../xds/node-block.js";
import { xdsProxySocketPath } from "../xds/proxy-socket.js";
import { xdsProxyComponentWith } from "./xds-proxy-component.js";

let root: string;
let mesh: MeshCa;
let pilot: PilotXdsServer;
const cleanups: (() => Promise<void> | void)[] = [];

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "istio-vm-xds-proxy-component-"));
  await chmod(root, 0o755);
  mesh = await createMeshCa();
  const serving = await mesh.issueKeyPair({ dnsNames: ["istiod.istio-system.svc"] });
  const store = new ObjectStore();
  store.create("services", {
    metadata: { name: "hello", namespace: "vmns" },
    spec: { clusterIP: "10.96.1.1", ports: [{ name: "http", port: 80 }] },
  });
  pilot = await startPilotXds({
    store,
    tls: { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: mesh.rootCertPem },
  });
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  await pilot.close();
  await rm(root, { recursive: true, force: true });
});

/** Runs the agent frame with the xds-proxy component only, its certificate issued for `serviceAccount`. */
async function startAgent(serviceAccount: string): Promise<{ values: ConfigValues; notifier: RecordingNotifier }> {
  const certs = join(root, "etc/certs");
  await mkdir(certs, { recursive: true });
  await mkdir(join(root, "var/lib/istio/envoy"), { recursive: true });
  const pair = await mesh.issueKeyPair({ identity: mesh.spiffeId("vmns", serviceAccount) });
  await writeFile(join(certs, "root-cert.pem"), mesh.rootCertPem);
  await writeFile(join(certs, "cert-chain.pem"), pair.chainPem);
  await writeFile(join(certs, "key.pem"), pair.keyPem, { mode: 0o600 });
  await writeFile(join(root, "var/lib/istio/envoy/cluster.env"), "POD_NAMESPACE=vmns\nSERVICE_ACCOUNT=vm-sa\n");
  await writeFile(
    join(root, "var/lib/istio/envoy/sidecar.env"),
    `ISTIO_SVC_IP=10.0.0.5\nDISCOVERY_ADDRESS=${pilot.address}\nSTATUS_PORT=${await freePort()}\n`,
  );
  const env = { ISTIO_VM_ROOT: root };
  const loaded = await loadConfig({ env, fs: nodeFileSystem });
  expect(loaded.problems).toEqual([]);
  const notifier = new RecordingNotifier();
  const signals = new ManualSignals();
  const run = runAgent({
    ...ports(env),
    logger: silentLogger,
    notifier,
    signals,
    components: [xdsProxyComponentWith({ initialBackoffMs: 50, maxBackoffMs: 200 })],
    version: "0.0.0-test",
  });
  cleanups.push(async () => {
    signals.raise("SIGTERM");
    expect(await run).toBe(0);
  });
  return { values: loaded.values, notifier };
}

/** Envoy, as the bootstrap makes it: the bootstrap's node, on the socket the bootstrap names. */
function envoy(values: ConfigValues): AdsTestClient {
  const node = buildNodeBlock({ config: values, extraMetadata: {}, hostname: "vm1" });
  const client = new AdsTestClient(xdsProxySocketPath(values), node);
  cleanups.push(() => {
    client.close();
  });
  return client;
}

/** The real file system, clock and HTTP; the host name the bootstrap's node is built with. */
function ports(env: NodeJS.ProcessEnv): SystemPorts {
  return fakePorts({
    env,
    fs: nodeFileSystem,
    runner: nodeProcessRunner,
    clock: systemClock,
    http: nodeHttpClient,
    uid: process.getuid?.(),
    hostname: () => "vm1",
  });
}

/** What `istio-vm check` builds on this VM (its configuration files, with `extra` in the environment). */
async function checkDeps(extra: NodeJS.ProcessEnv = {}): Promise<CheckDeps> {
  const env = { ISTIO_VM_ROOT: root, ...extra };
  const loaded = await loadConfig({ env, fs: nodeFileSystem });
  return checkDepsFrom(ports(env), { loaded, logger: silentLogger, timeoutMs: 2000 });
}

describe("the xds-proxy component", () => {
  it("is ready once istiod answered Envoy's CDS and LDS; STATUS= and the check say so", async () => {
    const { values, notifier } = await startAgent("vm-sa");
    await notifier.waitForStatus(/xds proxy: waiting for Envoy to subscribe/);
    const before = await xdsProxyCheck(await checkDeps()).run(new AbortController().signal);
    expect(before.status).toBe("fail");
    expect(before.hint).toContain("envoy check");

    const e = envoy(values);
    e.request(CDS_TYPE);
    const cds = await e.nextOf(CDS_TYPE);
    e.request(CDS_TYPE, { version: cds.version_info, nonce: cds.nonce });
    e.request(LDS_TYPE);
    await e.nextOf(LDS_TYPE);
    const ready = await notifier.waitForStatus(/^ready: /);
    expect(ready["STATUS"]).toContain(`xds proxy: istiod ${pilot.address} answered CDS, LDS; Envoy subscribed`);
    const result = await xdsProxyCheck(await checkDeps()).run(new AbortController().signal);
    expect(result.status).toBe("pass");
    expect(result.details[0]).toMatch(/XDS: mode 0600, uid \d+$/);
    expect(pilot.connections()[0]?.identities).toEqual([mesh.spiffeId("vmns", "vm-sa")]);
  });

  it("istiod's identity check refusing the certificate surfaces in STATUS= and in the check, with the reason", async () => {
    const { values, notifier } = await startAgent("not-the-vm-sa");
    await notifier.waitForStatus(/xds proxy: waiting for Envoy to subscribe/);
    const e = envoy(values);
    e.request(CDS_TYPE);
    const ended = await e.ended;
    expect(ended.details).toContain("PERMISSION_DENIED");
    const status = await notifier.waitForStatus(/PERMISSION_DENIED/);
    expect(status["STATUS"]).toMatch(
      /^degraded: .*xds proxy: .*authorization failed: no identities \(spiffe:\/\/cluster\.local\/ns\/vmns\/sa\/not-the-vm-sa\) matched the node's NAMESPACE=vmns SERVICE_ACCOUNT=vm-sa/,
    );
    const result = await xdsProxyCheck(await checkDeps()).run(new AbortController().signal);
    expect(result.status).toBe("fail");
    expect(result.summary).toContain("PERMISSION_DENIED");
    expect(result.hint).toContain("identity check refused");
  });

  it("the check skips on the legacy profile", async () => {
    const result = await xdsProxyCheck(await checkDeps({ ISTIO_CONTROL_PLANE: "legacy" })).run(
      new AbortController().signal,
    );
    expect(result.status).toBe("skip");
  });
});
