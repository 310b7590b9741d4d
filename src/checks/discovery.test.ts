import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { beforeAll, describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { loadConfig } from "../config/load.js";
import type { IssuedKeyPair, MeshCa } from "../devplane/mesh-ca.js";
import { createMeshCa } from "../devplane/mesh-ca.js";
import { meshPairs, startTlsPilot, vmCertFiles } from "../../test/support/mesh-pilot.js";
import { startPilotRest } from "../devplane/pilot-rest.js";
import { startPilotXds } from "../devplane/pilot-xds.js";
import { ADS_V2 } from "../devplane/pilot-xds-v2.js";
import { ObjectStore } from "../devplane/store.js";
import { systemClock } from "../platform/clock.js";
import { nodeDnsClient } from "../platform/dns.js";
import { nodeHttpClient } from "../platform/http.js";
import { createLogger } from "../platform/logger.js";
import { nodeProcessRunner } from "../platform/process.js";
import { nodeTlsProber } from "../platform/tls.js";
import { caCheck } from "./ca.js";
import type { CheckDeps } from "./check.js";
import { discoveryCheck } from "./discovery.js";
import { fakePorts } from "../../test/fakes/ports.js";
import { checkDepsFrom } from "./check.js";

const signal = new AbortController().signal;

function pilotStore(): ObjectStore {
  const store = new ObjectStore();
  store.create("services", {
    metadata: { name: "istio-pilot", namespace: "istio-system" },
    spec: { ports: [{ name: "http-discovery", port: 8080 }] },
  });
  store.create("endpoints", {
    metadata: { name: "istio-pilot", namespace: "istio-system" },
    subsets: [{ addresses: [{ ip: "10.1.0.8" }], ports: [{ name: "http-discovery", port: 8080 }] }],
  });
  return store;
}

async function deps(env: Record<string, string>, files: Record<string, string> = {}): Promise<CheckDeps> {
  const fs = new MemoryFileSystem(files);
  const loaded = await loadConfig({ env: { ISTIO_VM_ROOT: "/vm", ISTIO_SVC_IP: "10.0.0.5", ...env }, fs });
  expect(loaded.problems).toEqual([]);
  const ports = fakePorts({ env: { ISTIO_VM_ROOT: "/vm" }, fs, runner: nodeProcessRunner, clock: systemClock });
  return {
    ...checkDepsFrom(
      { ...ports, dns: nodeDnsClient, http: nodeHttpClient, tls: nodeTlsProber, hostname: () => "vm1.example.com" },
      { loaded, logger: createLogger({ level: "error", format: "plain", write: () => undefined }), timeoutMs: 3000 },
    ),
    metadata: { ISTIO_META_AUTO_REGISTER_GROUP: "vms", ISTIO_META_EXTRA: "x" },
    version: "0.1.0",
  };
}

/** A port nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) =>
    server.close(() => {
      resolve();
    }),
  );
  return port;
}

/** Pilot's own Services plus the VM's service mysqldb (3306), not registered yet: the legacy v1 and v2 checks' mesh. */
function meshStore(): ObjectStore {
  const store = pilotStore();
  store.create("services", {
    metadata: { name: "mysqldb", namespace: "default" },
    spec: { clusterIP: "10.96.0.20", ports: [{ name: "mysql", port: 3306 }] },
  });
  return store;
}

describe("legacy discovery check, ENVOY_XDS_API=v1 (Pilot's v1 CDS and LDS for this node)", () => {
  it("passes when CDS and LDS answer and the VM's inbound listener for each ISTIO_INBOUND_PORTS port is there", async () => {
    const store = meshStore();
    const pilot = await startPilotRest({ store });
    try {
      const env = {
        ISTIO_CONTROL_PLANE: "legacy",
        PILOT_ADDRESS: `127.0.0.1:${pilot.port}`,
        ISTIO_INBOUND_PORTS: "3306",
        POD_NAME: "vm1",
      };
      const node = "sidecar~10.0.0.5~vm1.default~default.svc.cluster.local";
      // Not registered yet: Pilot has clusters and listeners, but none for this VM's 3306.
      const missing = await discoveryCheck(await deps(env)).run(signal);
      expect(missing.status).toBe("fail");
      expect(missing.summary).toBe("Pilot has no inbound listener for 10.0.0.5:3306 (ISTIO_INBOUND_PORTS)");
      expect(missing.hint).toContain("istio-vm register <service> 10.0.0.5 <port>");
      expect(pilot.requests).toContain(`/v1/clusters/rawvm/${node}`);
      expect(pilot.requests).toContain(`/v1/listeners/rawvm/${node}`);
      store.create("endpoints", {
        metadata: { name: "mysqldb", namespace: "default" },
        subsets: [{ addresses: [{ ip: "10.0.0.5" }], ports: [{ name: "mysql", port: 3306 }] }],
      });
      const ok = await discoveryCheck(await deps(env)).run(signal);
      expect(ok.status).toBe("pass");
      expect(ok.summary).toBe("pilot ok (v1: 3 clusters, 4 listeners, inbound 3306)");
      expect(ok.data).toMatchObject({
        clusters: [
          "in.3306",
          "out.istio-pilot.istio-system.svc.cluster.local|http-discovery",
          "out.mysqldb.default.svc.cluster.local|mysql",
        ],
        // Pilot's http-discovery port is HTTP: one outbound listener per port, routes by RDS "8080".
        listeners: ["virtual", "http_0.0.0.0_8080", "tcp_10.0.0.5_3306", "tcp_10.96.0.20_3306"],
      });
      pilot.setFault("registry-unavailable");
      const down = await discoveryCheck(await deps(env)).run(signal);
      expect(down.summary).toBe("Pilot answered HTTP 503 (service registry unavailable)");
    } finally {
      await pilot.close();
    }
  });

  it("a node id Pilot cannot parse is a 404 with a hint about the node's parts", async () => {
    const pilot = await startPilotRest({ store: meshStore() });
    try {
      const res = await fetch(`${pilot.url}/v1/clusters/rawvm/sidecar~10.0.0.5~vm1.default`);
      expect(res.status).toBe(404);
      expect(await res.text()).toBe("missing parts in the service node\n");
    } finally {
      await pilot.close();
    }
  });
});

describe("legacy discovery check, ENVOY_XDS_API=v2 (ADS v2 CDS and LDS, Istio 0.8)", () => {
  let ca: MeshCa;
  let pilotCert: IssuedKeyPair;
  let workload: IssuedKeyPair;
  beforeAll(async () => {
    ca = await createMeshCa();
    // Legacy Pilot's certificate names its service account, which the v2 bootstrap verifies.
    pilotCert = await ca.issueKeyPair({
      identity: "spiffe://cluster.local/ns/istio-system/sa/istio-pilot-service-account",
      ipAddresses: ["127.0.0.1"],
    });
    workload = await ca.issueKeyPair({ identity: ca.spiffeId("default", "default") });
  });

  it("fetches CDS then LDS over mTLS to Pilot's SPIFFE id, ACKs both, and wants the VM's inbound listener", async () => {
    const store = meshStore();
    const xds = await startTlsPilot({ ca, serving: pilotCert }, store, { v3OnlyWhenAsked: true, alsoServe: ADS_V2 });
    const files = vmCertFiles({ ca, workload });
    const env = {
      ISTIO_CONTROL_PLANE: "legacy",
      ENVOY_XDS_API: "v2",
      DISCOVERY_ADDRESS: xds.address,
      ISTIO_INBOUND_PORTS: "3306",
      POD_NAME: "vm1",
    };
    try {
      const missing = await discoveryCheck(await deps(env, files)).run(signal);
      expect(missing.status).toBe("fail");
      expect(missing.summary).toBe("Pilot has no inbound listener for 10.0.0.5:3306 (ISTIO_INBOUND_PORTS)");
      store.create("endpoints", {
        metadata: { name: "mysqldb", namespace: "default" },
        subsets: [{ addresses: [{ ip: "10.0.0.5" }], ports: [{ name: "mysql", port: 3306 }] }],
      });
      const ok = await discoveryCheck(await deps(env, files)).run(signal);
      expect(ok.status, ok.hint).toBe("pass");
      expect(ok.summary).toBe("pilot ok (v2 ADS: 4 clusters, 4 listeners, inbound 3306, ACKed)");
      expect(ok.data).toMatchObject({
        clusters: expect.arrayContaining([
          "inbound|3306||mysqldb.default.svc.cluster.local",
          "outbound|3306||mysqldb.default.svc.cluster.local",
        ]) as unknown,
        listeners: expect.arrayContaining(["10.0.0.5_3306", "virtual"]) as unknown,
      });
      expect(xds.events.filter((e) => e.kind === "ack").map((e) => e.typeUrl)).toContain(
        "type.googleapis.com/envoy.api.v2.Listener",
      );
      // A Pilot whose certificate names another identity is refused, as Envoy's verify_subject_alt_name would.
      const wrongSan = await discoveryCheck(
        await deps({ ...env, ISTIO_SYSTEM_NAMESPACE: "mesh-ctl", DISCOVERY_ADDRESS: `localhost:${xds.port}` }, files),
      ).run(signal);
      expect(wrongSan.status).toBe("fail");
      expect(wrongSan.hint).toContain(
        "must chain to /vm/etc/certs/root-cert.pem and name spiffe://cluster.local/ns/default/sa/istio-pilot-service-account",
      );
      expect(wrongSan.details.join("\n")).toContain("do not include spiffe://cluster.local/ns/default/sa/");
    } finally {
      await xds.close();
    }
  });

  it("against a server without v2 (0.2–0.7 Pilot, or istiod): UNIMPLEMENTED and a hint naming the API", async () => {
    const xds = await startPilotXds({ store: meshStore() });
    try {
      const result = await discoveryCheck(
        await deps({
          ISTIO_CONTROL_PLANE: "legacy",
          ENVOY_XDS_API: "v2",
          CONTROL_PLANE_AUTH_POLICY: "NONE",
          DISCOVERY_ADDRESS: xds.address,
        }),
      ).run(signal);
      expect(result.summary).toBe(`ADS v2 to ${xds.address} failed: gRPC UNIMPLEMENTED`);
      expect(result.hint).toContain("does not serve xDS v2");
    } finally {
      await xds.close();
    }
  });
});

describe("legacy discovery check (Pilot v1 REST)", () => {
  it("passes with hosts, fails with the HTTP status and a hint on 503 and on no hosts", async () => {
    const store = pilotStore();
    const pilot = await startPilotRest({ store });
    try {
      // ENVOY_XDS_API=v3 on legacy: the registration request of the original recipe's docs.
      const d = await deps({
        ISTIO_CONTROL_PLANE: "legacy",
        ENVOY_XDS_API: "v3",
        PILOT_ADDRESS: `127.0.0.1:${pilot.port}`,
      });
      const ok = await discoveryCheck(d).run(signal);
      expect(ok.status).toBe("pass");
      expect(ok.summary).toBe("pilot ok (1 host for istio-pilot.istio-system.svc.cluster.local|http-discovery)");
      // The | travels encoded; Pilot decodes it.
      expect(ok.details[0]).toBe(
        `GET http://127.0.0.1:${pilot.port}/v1/registration/istio-pilot.istio-system.svc.cluster.local%7Chttp-discovery`,
      );
      expect(pilot.requests).toContain("/v1/registration/istio-pilot.istio-system.svc.cluster.local|http-discovery");

      pilot.setFault("registry-unavailable");
      const unavailable = await discoveryCheck(d).run(signal);
      expect(unavailable.status).toBe("fail");
      expect(unavailable.summary).toBe("Pilot answered HTTP 503 (service registry unavailable)");
      expect(unavailable.hint).toMatch(/kubectl -n istio-system logs deploy\/istio-pilot/);
      pilot.setFault("none");

      store.delete("endpoints", "istio-system", "istio-pilot");
      const empty = await discoveryCheck(d).run(signal);
      expect(empty.summary).toBe(
        "Pilot knows no endpoints for istio-pilot.istio-system.svc.cluster.local|http-discovery",
      );
      expect(empty.hint).toMatch(/get endpoints istio-pilot/);
    } finally {
      await pilot.close();
    }
  });

  it("names the connection error and points at kubedns when nothing listens", async () => {
    const d = await deps({ ISTIO_CONTROL_PLANE: "legacy", PILOT_ADDRESS: `127.0.0.1:${await closedPort()}` });
    const result = await discoveryCheck(d).run(signal);
    expect(result.summary).toMatch(/^Pilot at 127\.0\.0\.1:\d+ unreachable \(ECONNREFUSED\)$/);
    expect(result.hint).toMatch(/nothing listens .* check the address for 127\.0\.0\.1 in kubedns/);
  });
});

describe("istiod discovery check (ADS)", () => {
  let ca: MeshCa;
  let serving: IssuedKeyPair;
  let workload: IssuedKeyPair;
  beforeAll(async () => {
    ({ ca, serving, workload } = await meshPairs("default", "default"));
  });

  it("sends this VM's node (never AUTO_REGISTER_GROUP) over mTLS, gets clusters and ACKs them", async () => {
    const xds = await startTlsPilot({ ca, serving }, pilotStore());
    try {
      const d = await deps(
        { DISCOVERY_ADDRESS: xds.address, ISTIOD_SAN: "istiod.istio-system.svc" },
        vmCertFiles({ ca, workload }),
      );
      const result = await discoveryCheck(d).run(signal);
      expect(result.status, result.hint).toBe("pass");
      expect(result.summary).toMatch(/^pilot ok \(1 cluster, ACKed version \d+\)$/);
      const request = xds.events.find((e) => e.kind === "request");
      expect(request?.nodeId).toBe("sidecar~10.0.0.5~vm1.default~default.svc.cluster.local");
      expect(request?.metadata).toMatchObject({ NAMESPACE: "default", SERVICE_ACCOUNT: "default", EXTRA: "x" });
      expect(request?.metadata).not.toHaveProperty("AUTO_REGISTER_GROUP");
      expect(xds.events.some((e) => e.kind === "ack")).toBe(true);
    } finally {
      await xds.close();
    }
  });

  it("reports PERMISSION_DENIED with the identity hint, and a reset stream with the reset hint", async () => {
    const xds = await startTlsPilot({ ca, serving }, pilotStore(), { requireClientCert: false });
    try {
      const files = vmCertFiles({ ca, workload });
      const wrongSa = await deps({ DISCOVERY_ADDRESS: xds.address, SERVICE_ACCOUNT: "other" }, files);
      const denied = await discoveryCheck(wrongSa).run(signal);
      expect(denied.summary).toBe(`ADS to ${xds.address} failed: gRPC PERMISSION_DENIED`);
      expect(denied.hint).toMatch(/SERVICE_ACCOUNT=other/);

      xds.setFault("stream-reset");
      const d = await deps({ DISCOVERY_ADDRESS: xds.address }, files);
      const reset = await discoveryCheck(d).run(signal);
      expect(reset.summary).toBe(`ADS to ${xds.address} failed: gRPC INTERNAL`);
      expect(reset.hint).toMatch(/^the ADS stream was reset/);
    } finally {
      await xds.close();
    }
  });

  it("speaks plain text when CONTROL_PLANE_AUTH_POLICY=NONE", async () => {
    const xds = await startPilotXds({ store: pilotStore() });
    try {
      const d = await deps({ CONTROL_PLANE_AUTH_POLICY: "NONE", DISCOVERY_ADDRESS: xds.address });
      const result = await discoveryCheck(d).run(signal);
      expect(result.status).toBe("pass");
      expect(result.details[0]).toBe(`ADS plain text to ${xds.address}`);
    } finally {
      await xds.close();
    }
  });
});

describe("CA check", () => {
  it("passes for the right name and root; names the presented identity otherwise; spots a foreign root", async () => {
    const ca = await createMeshCa();
    const other = await createMeshCa();
    const serving = await ca.issueKeyPair({ dnsNames: ["istio-ca"] });
    const xds = await startTlsPilot({ ca, serving }, pilotStore(), { requireClientCert: false });
    try {
      const env = { ISTIO_CONTROL_PLANE: "legacy", CA_ADDR: xds.address };
      const good = await caCheck(await deps(env, { "/vm/etc/certs/root-cert.pem": ca.rootCertPem })).run(signal);
      expect(good.status, good.hint).toBe("pass");
      expect(good.summary).toMatch(/is istio-ca, chain ok$/);

      const wrongName = await caCheck(
        await deps(
          { ...env, ISTIOD_SAN: "istiod.istio-system.svc" },
          { "/vm/etc/certs/root-cert.pem": ca.rootCertPem },
        ),
      ).run(signal);
      expect(wrongName.summary).toBe(`the server at ${xds.address} presents DNS:istio-ca, not istiod.istio-system.svc`);

      const foreign = await caCheck(await deps(env, { "/vm/etc/certs/root-cert.pem": other.rootCertPem })).run(signal);
      expect(foreign.summary).toBe("the CA's certificate does not chain to /vm/etc/certs/root-cert.pem");
      expect(foreign.hint).toMatch(/not this mesh's root/);
    } finally {
      await xds.close();
    }
  });
});
