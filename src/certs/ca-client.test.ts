import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DevCaServer } from "../devplane/ca-server.js";
import { startDevCaServer } from "../devplane/ca-server.js";
import type { MeshCa } from "../devplane/mesh-ca.js";
import { createMeshCa } from "../devplane/mesh-ca.js";
import type { ServiceAccountTokens } from "../devplane/sa-tokens.js";
import { DEFAULT_TOKEN_AUDIENCE, createServiceAccountTokens } from "../devplane/sa-tokens.js";
import type { CaClient, CaProtocol } from "./ca-client.js";
import { CaCallError, caServerName, createCaClient, createLegacyCaClient } from "./ca-client.js";
import { createCsr } from "./csr.js";
import { generateWorkloadKey } from "./keys.js";

describe("caServerName", () => {
  it("uses the dial host for a DNS name, as both original clients did", () => {
    expect(caServerName({ host: "istio-ca", port: 8060 }, { value: "istio-ca", explicit: false })).toBe("istio-ca");
    expect(
      caServerName(
        { host: "istiod.istio-system.svc", port: 15012 },
        { value: "istiod.istio-system.svc", explicit: false },
      ),
    ).toBe("istiod.istio-system.svc");
  });

  it("uses ISTIOD_SAN when dialing an IP, or when the admin set it explicitly", () => {
    expect(caServerName({ host: "10.0.0.7", port: 15012 }, { value: "istiod.istio-system.svc", explicit: false })).toBe(
      "istiod.istio-system.svc",
    );
    expect(caServerName({ host: "::1", port: 15012 }, { value: "istiod.istio-system.svc", explicit: false })).toBe(
      "istiod.istio-system.svc",
    );
    expect(
      caServerName({ host: "lb.example.com", port: 15012 }, { value: "istiod.istio-system.svc", explicit: true }),
    ).toBe("istiod.istio-system.svc");
  });
});

describe("legacy client", () => {
  it("refuses to send a token: the legacy CA authenticates VMs only by their certificate", async () => {
    const client = createLegacyCaClient({
      address: { host: "127.0.0.1", port: 1 },
      serverName: "istio-ca",
      rootPem: "",
      timeoutMs: 100,
    });
    const error = await client
      .sign({ csrPem: "x", ttlMs: 1, credential: { kind: "token", token: "t" } })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CaCallError);
    expect((error as CaCallError).reason).toBe("unauthenticated");
  });
});

describe("the CA connection kept between calls", () => {
  let mesh: MeshCa;
  let server: DevCaServer;
  let tokens: ServiceAccountTokens;
  const identity = "spiffe://cluster.local/ns/vmns/sa/vm-sa";
  beforeAll(async () => {
    mesh = await createMeshCa();
    tokens = createServiceAccountTokens();
    server = await startDevCaServer({
      mesh,
      verifyToken: (token) => Promise.resolve(tokens.verify(token, DEFAULT_TOKEN_AUDIENCE)),
    });
  });
  afterAll(async () => {
    await server.close();
  });

  const csr = async (): Promise<string> => createCsr(await generateWorkloadKey({ type: "EC" }), identity);
  const client = (protocol: CaProtocol, now: () => number = Date.now): CaClient =>
    createCaClient(protocol, {
      address: { host: "127.0.0.1", port: server.port },
      serverName: protocol === "legacy" ? "istio-ca" : "istiod.istio-system.svc",
      rootPem: mesh.rootCertPem,
      timeoutMs: 5000,
      now,
    });
  const peers = (from: number): string[] => server.calls.slice(from).map((c) => c.peer);

  for (const protocol of ["istiod", "legacy"] as const) {
    it(`${protocol}: renewals reuse one connection while the pair it was made with is valid`, async () => {
      const first = await mesh.issueKeyPair({ identity });
      const ca = client(protocol);
      const from = server.calls.length;
      try {
        const issued = await ca.sign({ csrPem: await csr(), ttlMs: 3600_000, credential: { kind: "mtls", ...first } });
        // The next renewal presents the pair just issued; the connection made with the first one is still good.
        const second = { keyPem: first.keyPem, chainPem: issued.join("") };
        await ca.sign({ csrPem: await csr(), ttlMs: 3600_000, credential: { kind: "mtls", ...second } });
        await ca.sign({ csrPem: await csr(), ttlMs: 3600_000, credential: { kind: "mtls", ...second } });
      } finally {
        ca.close();
      }
      const seen = peers(from);
      expect(seen).toHaveLength(3);
      expect(new Set(seen).size).toBe(1);
      expect(server.calls.slice(from).map((c) => [c.outcome, c.identity])).toEqual([
        ["issued", identity],
        ["issued", identity],
        ["issued", identity],
      ]);
    });
  }

  it("dials anew when the connection's certificate would expire within the call's deadline", async () => {
    const now = Date.now();
    const short = await mesh.issueKeyPair({
      identity,
      notBefore: new Date(now - 60_000),
      notAfter: new Date(now + 60_000),
    });
    const fresh = await mesh.issueKeyPair({ identity });
    let clock = now;
    const ca = client("istiod", () => clock);
    const from = server.calls.length;
    try {
      await ca.sign({ csrPem: await csr(), ttlMs: 3600_000, credential: { kind: "mtls", ...short } });
      // 57 s later the short pair has 3 s left, less than the 5 s deadline: a new connection with the fresh pair.
      clock = now + 57_000;
      await ca.sign({ csrPem: await csr(), ttlMs: 3600_000, credential: { kind: "mtls", ...fresh } });
      await ca.sign({ csrPem: await csr(), ttlMs: 3600_000, credential: { kind: "mtls", ...fresh } });
    } finally {
      ca.close();
    }
    const [a, b, c] = peers(from);
    expect(b).not.toBe(a);
    expect(c).toBe(b);
  });

  it("dials anew after a failed call, and keeps token calls off the certificate's connection", async () => {
    const pair = await mesh.issueKeyPair({ identity });
    const ca = client("istiod");
    const from = server.calls.length;
    try {
      await ca.sign({ csrPem: await csr(), ttlMs: 3600_000, credential: { kind: "mtls", ...pair } });
      server.fault = { kind: "unavailable", times: 1 };
      const failed = await ca
        .sign({ csrPem: await csr(), ttlMs: 3600_000, credential: { kind: "mtls", ...pair } })
        .catch((e: unknown) => e);
      expect((failed as CaCallError).reason).toBe("unavailable");
      await ca.sign({ csrPem: await csr(), ttlMs: 3600_000, credential: { kind: "mtls", ...pair } });
      const { token } = tokens.issue({
        namespace: "vmns",
        serviceAccount: "vm-sa",
        audiences: [DEFAULT_TOKEN_AUDIENCE],
        expirationSeconds: 600,
      });
      await ca.sign({ csrPem: await csr(), ttlMs: 3600_000, credential: { kind: "token", token } });
    } finally {
      ca.close();
    }
    const calls = server.calls.slice(from);
    expect(calls.map((c) => c.authenticatedBy ?? c.outcome)).toEqual([
      "certificate",
      "UNAVAILABLE",
      "certificate",
      "token",
    ]);
    const [a, b, c, d] = calls.map((call) => call.peer);
    expect(b).toBe(a);
    expect(c).not.toBe(b);
    expect(d).not.toBe(c);
  });
});
