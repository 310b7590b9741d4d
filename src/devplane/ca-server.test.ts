import { X509Certificate } from "node:crypto";
import { readFile, readlink, stat } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { CertFixture } from "../../test/support/cert-fixture.js";
import { NAMESPACE, SERVICE_ACCOUNT, createCertFixture } from "../../test/support/cert-fixture.js";
import { createCaClient } from "../certs/ca-client.js";
import { nodeProcessRunner } from "../platform/process.js";
import { createCsr } from "../certs/csr.js";
import { generateWorkloadKey } from "../certs/keys.js";
import { RenewError, renewOnce } from "../certs/renew.js";
import { verifyPair } from "../certs/verify.js";
import type { CaFaultKind } from "./ca-faults.js";
import { CA_FAULT_KINDS, parseCaFault, setRemoteCaFault } from "./ca-faults.js";

let fixture: CertFixture | undefined;
afterEach(async () => {
  await fixture?.close();
  fixture = undefined;
});

async function onDisk(dir: string): Promise<{ keyPem: string; chainPem: string }> {
  return {
    keyPem: await readFile(join(dir, "key.pem"), "utf8"),
    chainPem: await readFile(join(dir, "cert-chain.pem"), "utf8"),
  };
}

describe.each(["legacy", "istiod"] as const)("dev CA over TLS, %s protocol", (protocol) => {
  it("renews an installed pair over mTLS; the new pair verifies to the root and is stored as a pair", async () => {
    fixture = await createCertFixture({ protocol });
    const installed = await fixture.installPair();
    const result = await renewOnce(fixture.context);
    expect(result.credential).toBe("mtls");
    const stored = await onDisk(fixture.dir);
    expect(stored.chainPem).not.toBe(installed.chainPem);
    const verified = verifyPair({
      ...stored,
      rootPem: fixture.mesh.rootCertPem,
      expectedIdentity: fixture.identity,
      now: Date.now(),
    });
    expect(verified.info.uris).toEqual([`spiffe://cluster.local/ns/${NAMESPACE}/sa/${SERVICE_ACCOUNT}`]);
    // cert-chain.pem holds the leaf only: the root the CA appended belongs in root-cert.pem.
    expect(verified.info.chainLength).toBe(1);
    expect(await readlink(join(fixture.dir, "key.pem"))).toBe("..data/key.pem");
    expect((await stat(join(fixture.dir, "key.pem"))).mode & 0o777).toBe(0o600);
    expect((await stat(join(fixture.dir, "cert-chain.pem"))).mode & 0o777).toBe(0o644);
    expect(fixture.server.calls.at(-1)).toMatchObject({ protocol, authenticatedBy: "certificate", outcome: "issued" });
    // Real signing: openssl agrees the new certificate chains to the dev root and is fit for both TLS ends.
    for (const purpose of ["sslclient", "sslserver"]) {
      const result = await nodeProcessRunner.run(
        "openssl",
        [
          "verify",
          "-purpose",
          purpose,
          "-CAfile",
          join(fixture.dir, "root-cert.pem"),
          join(fixture.dir, "cert-chain.pem"),
        ],
        { timeoutMs: 20_000 },
      );
      expect(result.stdout + result.stderr).toMatch(/: OK/);
    }
  });

  it("honours the requested lifetime (capped by the CA)", async () => {
    fixture = await createCertFixture({ protocol, ttlMs: 2 * 3600_000, server: { maxTtlMs: 3 * 3600_000 } });
    await fixture.installPair();
    const result = await renewOnce(fixture.context);
    const lifetime = result.info.notAfter.getTime() - result.info.notBefore.getTime();
    // mesh-ca backdates NotBefore by a minute.
    expect(lifetime).toBe(2 * 3600_000 + 60_000);
  });

  it.each(CA_FAULT_KINDS.filter((k) => k !== "delay"))(
    "fault %s: the call fails and the old pair stays",
    async (kind: CaFaultKind) => {
      fixture = await createCertFixture({ protocol });
      await fixture.installPair();
      await renewOnce(fixture.context);
      const before = await onDisk(fixture.dir);
      fixture.server.fault = { kind };
      const error = await renewOnce(fixture.context).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(RenewError);
      const expected: Record<string, string> = {
        deny: "denied",
        unavailable: "unavailable",
        garbage: "invalid-response",
        "wrong-identity": "identity",
        expired: "expired",
        "foreign-chain": "chain",
      };
      expect((error as RenewError).reason).toBe(expected[kind]);
      expect(await onDisk(fixture.dir)).toEqual(before);
      // The CA recovers: the next renewal works with the pair that stayed.
      fixture.server.fault = undefined;
      await renewOnce(fixture.context);
      expect((await onDisk(fixture.dir)).chainPem).not.toBe(before.chainPem);
    },
  );

  it("fault delay beyond the call deadline fails with deadline and keeps the pair", async () => {
    fixture = await createCertFixture({ protocol, timeoutMs: 300 });
    await fixture.installPair();
    const before = await onDisk(fixture.dir);
    fixture.server.fault = { kind: "delay", delayMs: 1500 };
    await expect(renewOnce(fixture.context)).rejects.toMatchObject({ reason: "deadline" });
    expect(await onDisk(fixture.dir)).toEqual(before);
  });
});

describe("dev CA authentication", () => {
  it("istiod: the first certificate is fetched with the service-account token, the next over mTLS", async () => {
    fixture = await createCertFixture({ protocol: "istiod" });
    await fixture.writeToken();
    const first = await renewOnce(fixture.context);
    expect(first.credential).toBe("token");
    expect(fixture.server.calls.at(-1)).toMatchObject({ authenticatedBy: "token", identity: fixture.identity });
    const second = await renewOnce(fixture.context);
    expect(second.credential).toBe("mtls");
    expect(fixture.server.calls.at(-1)).toMatchObject({ authenticatedBy: "certificate", identity: fixture.identity });
  });

  it("istiod: an expired certificate is replaced using the token (re-bootstrap)", async () => {
    fixture = await createCertFixture({ protocol: "istiod" });
    const now = Date.now();
    await fixture.installPair({ notBefore: new Date(now - 3 * 3600_000), notAfter: new Date(now - 3600_000) });
    await fixture.writeToken();
    const result = await renewOnce(fixture.context);
    expect(result.credential).toBe("token");
    expect(result.info.notAfter.getTime()).toBeGreaterThan(now);
  });

  it("istiod: without a certificate or token the call is refused and nothing is written", async () => {
    fixture = await createCertFixture({ protocol: "istiod" });
    await expect(renewOnce(fixture.context)).rejects.toMatchObject({ reason: "no-credential" });
    expect(fixture.server.calls).toEqual([]);
    await expect(readFile(join(fixture.dir, "key.pem"))).rejects.toThrow(/ENOENT/);
  });

  it("istiod: a token for another audience is refused as unauthenticated", async () => {
    fixture = await createCertFixture({ protocol: "istiod" });
    const root = fixture.mesh.rootCertPem;
    const { token } = fixture.tokens.issue({
      namespace: NAMESPACE,
      serviceAccount: SERVICE_ACCOUNT,
      audiences: ["something-else"],
      expirationSeconds: 600,
    });
    const key = await generateWorkloadKey({ type: "EC" });
    const client = createCaClient("istiod", {
      address: { host: "127.0.0.1", port: fixture.server.port },
      serverName: "istiod.istio-system.svc",
      rootPem: root,
      timeoutMs: 5000,
    });
    await expect(
      client.sign({
        csrPem: await createCsr(key, fixture.identity),
        ttlMs: 3600_000,
        credential: { kind: "token", token },
      }),
    ).rejects.toMatchObject({ reason: "unauthenticated" });
  });

  it("istiod: the identity comes from the caller, not from the CSR", async () => {
    fixture = await createCertFixture({ protocol: "istiod" });
    const { keyPem, chainPem } = await fixture.installPair();
    const key = await generateWorkloadKey({ type: "EC" });
    const client = fixture.context.connect(fixture.mesh.rootCertPem);
    const certs = await client.sign({
      csrPem: await createCsr(key, fixture.mesh.spiffeId("kube-system", "admin")),
      ttlMs: 3600_000,
      credential: { kind: "mtls", keyPem, chainPem },
    });
    expect(new X509Certificate(certs[0] ?? "").subjectAltName).toBe(`URI:${fixture.identity}`);
  });

  it("legacy: a CSR for another identity than the caller's is not authorized", async () => {
    fixture = await createCertFixture({ protocol: "legacy" });
    const { keyPem, chainPem } = await fixture.installPair();
    const key = await generateWorkloadKey({ type: "EC" });
    const client = fixture.context.connect(fixture.mesh.rootCertPem);
    await expect(
      client.sign({
        csrPem: await createCsr(key, fixture.mesh.spiffeId("kube-system", "admin")),
        ttlMs: 3600_000,
        credential: { kind: "mtls", keyPem, chainPem },
      }),
    ).rejects.toMatchObject({ reason: "denied" });
  });

  it("legacy: a client certificate from another root is not accepted", async () => {
    fixture = await createCertFixture({ protocol: "legacy" });
    const other = await createCertFixture({ protocol: "legacy" });
    try {
      const foreign = await other.mesh.issueKeyPair({ identity: fixture.identity });
      const key = await generateWorkloadKey({ type: "EC" });
      const client = fixture.context.connect(fixture.mesh.rootCertPem);
      await expect(
        client.sign({
          csrPem: await createCsr(key, fixture.identity),
          ttlMs: 3600_000,
          credential: { kind: "mtls", keyPem: foreign.keyPem, chainPem: foreign.chainPem },
        }),
      ).rejects.toMatchObject({ reason: "unauthenticated" });
    } finally {
      await other.close();
    }
  });

  it("legacy: the 0.7 answer layout (leaf and chain in field 3) is read too", async () => {
    fixture = await createCertFixture({ protocol: "legacy", server: { legacyLayout: "0.7" } });
    await fixture.installPair();
    const result = await renewOnce(fixture.context);
    expect(result.info.chainLength).toBe(1);
  });

  it("a TLS server name the CA certificate does not carry fails the call as untrusted (retrying will not fix it)", async () => {
    fixture = await createCertFixture({ protocol: "istiod" });
    const { keyPem, chainPem } = await fixture.installPair();
    const client = createCaClient("istiod", {
      address: { host: "127.0.0.1", port: fixture.server.port },
      serverName: "not-the-ca.example",
      rootPem: fixture.mesh.rootCertPem,
      timeoutMs: 5000,
    });
    const key = await generateWorkloadKey({ type: "EC" });
    await expect(
      client.sign({
        csrPem: await createCsr(key, fixture.identity),
        ttlMs: 3600_000,
        credential: { kind: "mtls", keyPem, chainPem },
      }),
    ).rejects.toMatchObject({ reason: "untrusted" });
  });
});

describe("fault control", () => {
  it("parses fault specs and rejects unknown ones", () => {
    expect(parseCaFault("delay:250")).toEqual({ kind: "delay", delayMs: 250 });
    expect(parseCaFault("expired*2")).toEqual({ kind: "expired", times: 2 });
    expect(parseCaFault("none")).toBeUndefined();
    expect(() => parseCaFault("explode")).toThrow(/unknown CA fault/);
    expect(() => parseCaFault("delay")).toThrow(/milliseconds/);
  });

  it("a fault with a count clears itself; the admin method sets faults remotely", async () => {
    fixture = await createCertFixture({ protocol: "istiod" });
    await fixture.installPair();
    await setRemoteCaFault({
      address: `127.0.0.1:${fixture.server.port}`,
      rootCertPem: fixture.mesh.rootCertPem,
      fault: "unavailable*1",
    });
    await expect(renewOnce(fixture.context)).rejects.toMatchObject({ reason: "unavailable" });
    await renewOnce(fixture.context);
    expect(fixture.server.fault).toBeUndefined();
  });
});
