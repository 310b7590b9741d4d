import { execFileSync } from "node:child_process";
import { X509Certificate, createPrivateKey, createPublicKey, generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createMeshCa, loadMeshCa } from "./mesh-ca.js";

const dir = mkdtempSync(join(tmpdir(), "mesh-ca-"));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

function openssl(args: string[]): string {
  return execFileSync("openssl", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

describe("createMeshCa", () => {
  it("issues a workload certificate that openssl verifies against the root, with the SPIFFE identity", async () => {
    const ca = await createMeshCa({ trustDomain: "example.org" });
    const pair = await ca.issueKeyPair({ identity: ca.spiffeId("default", "vm"), keyAlgorithm: "rsa-2048" });
    writeFileSync(join(dir, "root.pem"), ca.rootCertPem);
    writeFileSync(join(dir, "leaf.pem"), pair.certPem);
    expect(openssl(["verify", "-CAfile", join(dir, "root.pem"), join(dir, "leaf.pem")])).toContain("OK");
    expect(
      openssl(["verify", "-purpose", "sslclient", "-CAfile", join(dir, "root.pem"), join(dir, "leaf.pem")]),
    ).toContain("OK");

    const leaf = new X509Certificate(pair.certPem);
    expect(leaf.subjectAltName).toBe("URI:spiffe://example.org/ns/default/sa/vm");
    expect(leaf.ca).toBe(false);
    expect(leaf.checkIssued(new X509Certificate(ca.rootCertPem))).toBe(true);
    // The key in key.pem is the key the certificate certifies, and it is RSA-2048 as Citadel issued.
    const key = createPrivateKey(pair.keyPem);
    expect(key.asymmetricKeyDetails?.modulusLength).toBe(2048);
    expect(leaf.checkPrivateKey(key)).toBe(true);
    expect(pair.chainPem).toBe(pair.certPem);
    expect(new X509Certificate(ca.rootCertPem).ca).toBe(true);
  });

  it("signs a caller's public key with the requested lifetime and usages", async () => {
    const now = Date.parse("2026-01-01T00:00:00Z");
    const ca = await createMeshCa({ now: () => now });
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const pem = await ca.issue({
      publicKey: publicKey.export({ format: "pem", type: "spki" }).toString(),
      dnsNames: ["localhost"],
      ipAddresses: ["127.0.0.1"],
      ttlMs: 3600_000,
      clientAuth: false,
    });
    const cert = new X509Certificate(pem);
    expect(cert.publicKey.export({ format: "pem", type: "spki" })).toEqual(
      publicKey.export({ format: "pem", type: "spki" }),
    );
    expect(Date.parse(cert.validTo)).toBe(now + 3600_000);
    expect(cert.subjectAltName).toBe("DNS:localhost, IP Address:127.0.0.1");
    expect(cert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.1"]);
  });

  it("refuses a certificate with no name at all and an inverted validity", async () => {
    const ca = await createMeshCa();
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    await expect(ca.issue({ publicKey })).rejects.toThrow(/needs an identity/);
    await expect(
      ca.issue({ publicKey, identity: "spiffe://x/ns/a/sa/b", notBefore: new Date(2), notAfter: new Date(1) }),
    ).rejects.toThrow(/notAfter/);
  });

  it("continues signing with a root loaded back from PEM", async () => {
    const first = await createMeshCa({ keyAlgorithm: "rsa-2048" });
    const again = await loadMeshCa({
      rootCertPem: first.rootCertPem,
      rootKeyPem: first.rootKey.export({ format: "pem", type: "pkcs8" }).toString(),
    });
    const pair = await again.issueKeyPair({ identity: again.spiffeId("ns1", "sa1") });
    expect(new X509Certificate(pair.certPem).verify(createPublicKey(first.rootKey))).toBe(true);
  });
});
