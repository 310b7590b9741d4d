import { describe, expect, it } from "vitest";
import { createMeshCa } from "../devplane/mesh-ca.js";
import {
  fetchIstiodBootstrap,
  fetchLegacyCerts,
  spiffeId,
  verifyWorkloadCerts,
  writeBundle,
} from "./bootstrap-certs.js";
import { FakeKubeClient, legacySecret, seedIstiodCluster, seedLegacyCluster } from "../../test/fakes/kube-client.js";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";

const HOUR = 3600_000;

describe("fetchLegacyCerts", () => {
  it("returns only the root by default, and all three verified files with --all", async () => {
    const client = new FakeKubeClient();
    const ca = await seedLegacyCluster(client.store);
    const now = Date.now();
    const rootOnly = await fetchLegacyCerts(client, {
      serviceAccount: "default",
      namespace: "default",
      all: false,
      trustDomain: "cluster.local",
      now,
    });
    expect(rootOnly.files.map((f) => f.name)).toEqual(["root-cert.pem"]);
    expect(rootOnly.files[0]?.content).toBe(ca.rootCertPem);

    const all = await fetchLegacyCerts(client, {
      serviceAccount: "default",
      namespace: "default",
      all: true,
      trustDomain: "cluster.local",
      now,
    });
    expect(all.files.map((f) => [f.name, f.mode])).toEqual([
      ["root-cert.pem", 0o644],
      ["cert-chain.pem", 0o644],
      ["key.pem", 0o600],
    ]);
    expect(all.leaf?.identity).toBe("spiffe://cluster.local/ns/default/sa/default");
    expect(all.warnings).toEqual([]);
    expect(client.requests).toHaveLength(2);
  });

  it("names the secret and the service account when the secret is missing", async () => {
    const client = new FakeKubeClient();
    await seedLegacyCluster(client.store);
    await expect(
      fetchLegacyCerts(client, {
        serviceAccount: "vm",
        namespace: "default",
        all: true,
        trustDomain: "cluster.local",
        now: Date.now(),
      }),
    ).rejects.toMatchObject({ code: "SECRET_NOT_FOUND", message: "secret default/istio.vm does not exist" });
  });

  it("refuses a secret whose identity is for another trust domain", async () => {
    const client = new FakeKubeClient();
    await seedLegacyCluster(client.store);
    await expect(
      fetchLegacyCerts(client, {
        serviceAccount: "default",
        namespace: "default",
        all: true,
        trustDomain: "other.td",
        now: Date.now(),
      }),
    ).rejects.toMatchObject({ code: "IDENTITY_MISMATCH" });
  });
});

describe("verifyWorkloadCerts", () => {
  const identity = spiffeId("cluster.local", "ns1", "sa1");

  it("rejects a key that belongs to another certificate", async () => {
    const ca = await createMeshCa();
    const a = await ca.issueKeyPair({ identity });
    const b = await ca.issueKeyPair({ identity });
    expect(() =>
      verifyWorkloadCerts({
        rootPem: ca.rootCertPem,
        chainPem: a.chainPem,
        keyPem: b.keyPem,
        expectedIdentity: identity,
        now: Date.now(),
        subject: "s",
      }),
    ).toThrow(expect.objectContaining({ code: "KEY_MISMATCH" }) as unknown);
  });

  it("rejects a chain that does not lead to the given root", async () => {
    const ca = await createMeshCa();
    const other = await createMeshCa();
    const pair = await ca.issueKeyPair({ identity });
    expect(() =>
      verifyWorkloadCerts({
        rootPem: other.rootCertPem,
        chainPem: pair.chainPem,
        keyPem: pair.keyPem,
        expectedIdentity: identity,
        now: Date.now(),
        subject: "s",
      }),
    ).toThrow(expect.objectContaining({ code: "CHAIN_UNTRUSTED" }) as unknown);
  });

  it("rejects an expired certificate and warns when under half of the lifetime is left", async () => {
    const ca = await createMeshCa();
    const now = Date.now();
    const expired = await ca.issueKeyPair({
      identity,
      notBefore: new Date(now - 2 * HOUR),
      notAfter: new Date(now - HOUR),
    });
    expect(() =>
      verifyWorkloadCerts({
        rootPem: ca.rootCertPem,
        chainPem: expired.chainPem,
        keyPem: expired.keyPem,
        expectedIdentity: identity,
        now,
        subject: "s",
      }),
    ).toThrow(expect.objectContaining({ code: "CERT_EXPIRED" }) as unknown);

    const old = await ca.issueKeyPair({
      identity,
      notBefore: new Date(now - 15 * HOUR),
      notAfter: new Date(now + 4 * HOUR),
    });
    const result = verifyWorkloadCerts({
      rootPem: ca.rootCertPem,
      chainPem: old.chainPem,
      keyPem: old.keyPem,
      expectedIdentity: identity,
      now,
      subject: "s",
    });
    expect(result.warnings).toHaveLength(1);
    expect(result.warnings[0]).toMatch(/4h.* of its 19h lifetime left/);
    expect(result.leaf.remaining).toBeLessThan(0.5);
  });

  it("rejects a certificate without the expected SPIFFE identity", async () => {
    const ca = await createMeshCa();
    const pair = await ca.issueKeyPair({ identity: spiffeId("cluster.local", "ns1", "other") });
    expect(() =>
      verifyWorkloadCerts({
        rootPem: ca.rootCertPem,
        chainPem: pair.chainPem,
        keyPem: pair.keyPem,
        expectedIdentity: identity,
        now: Date.now(),
        subject: "s",
      }),
    ).toThrow(/spiffe:\/\/cluster.local\/ns\/ns1\/sa\/other, expected spiffe:\/\/cluster.local\/ns\/ns1\/sa\/sa1/);
  });

  it("accepts a legacy secret with an RSA key", async () => {
    const ca = await createMeshCa({ keyAlgorithm: "rsa-2048" });
    const pair = await ca.issueKeyPair({ identity, keyAlgorithm: "rsa-2048" });
    const client = new FakeKubeClient();
    client.store.create(
      "secrets",
      legacySecret("ns1", "sa1", { root: ca.rootCertPem, chain: pair.chainPem, key: pair.keyPem }),
    );
    const bundle = await fetchLegacyCerts(client, {
      serviceAccount: "sa1",
      namespace: "ns1",
      all: true,
      trustDomain: "cluster.local",
      now: Date.now(),
    });
    expect(bundle.files).toHaveLength(3);
  });
});

describe("fetchIstiodBootstrap", () => {
  it("returns the root certificate and a token for audience istio-ca with the asked lifetime", async () => {
    const client = new FakeKubeClient();
    const ca = await seedIstiodCluster(client.store);
    const now = Date.now();
    const bundle = await fetchIstiodBootstrap(client, {
      serviceAccount: "default",
      namespace: "default",
      audience: "istio-ca",
      tokenSeconds: 3600,
      now,
    });
    expect(bundle.files.map((f) => [f.name, f.mode])).toEqual([
      ["root-cert.pem", 0o644],
      ["istio-token", 0o600],
    ]);
    expect(bundle.files[0]?.content).toBe(ca.rootCertPem);
    const token = bundle.files[1]?.content ?? "";
    const claims = JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString()) as {
      aud: string[];
      exp: number;
    };
    expect(claims.aud).toEqual(["istio-ca"]);
    expect(claims.exp * 1000 - now).toBeGreaterThan(3500_000);
    expect(client.requests.map((r) => `${r.verb} ${r.path}`)).toEqual([
      "get /api/v1/namespaces/default/configmaps/istio-ca-root-cert",
      "create /api/v1/namespaces/default/serviceaccounts/default/token",
    ]);
  });

  it("explains a missing service account and a missing root ConfigMap", async () => {
    const client = new FakeKubeClient();
    await seedIstiodCluster(client.store);
    await expect(
      fetchIstiodBootstrap(client, {
        serviceAccount: "nope",
        namespace: "default",
        audience: "istio-ca",
        tokenSeconds: 3600,
        now: Date.now(),
      }),
    ).rejects.toMatchObject({
      code: "SERVICE_ACCOUNT_NOT_FOUND",
      hint: expect.stringContaining("create serviceaccount nope") as unknown,
    });
    await expect(
      fetchIstiodBootstrap(client, {
        serviceAccount: "default",
        namespace: "kube-system",
        audience: "istio-ca",
        tokenSeconds: 3600,
        now: Date.now(),
      }),
    ).rejects.toMatchObject({ code: "ROOT_CERT_NOT_FOUND" });
  });
});

describe("writeBundle", () => {
  it("writes every file with its mode into a created directory, and refuses a file as directory", async () => {
    const fs = new MemoryFileSystem({ "/out/file": "x" });
    const written = await writeBundle(fs, "/out/certs", [
      { name: "root-cert.pem", content: "root", mode: 0o644 },
      { name: "key.pem", content: "key", mode: 0o600 },
    ]);
    expect(written).toEqual(["/out/certs/root-cert.pem", "/out/certs/key.pem"]);
    expect(fs.files.get("/out/certs/key.pem")?.mode).toBe(0o600);
    expect(fs.files.get("/out/certs/root-cert.pem")?.mode).toBe(0o644);
    await expect(writeBundle(fs, "/out/file", [])).rejects.toMatchObject({ code: "OUTPUT_NOT_DIRECTORY" });
  });
});
