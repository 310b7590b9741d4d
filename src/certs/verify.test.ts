import { generateKeyPairSync } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import type { MeshCa } from "../devplane/mesh-ca.js";
import { createMeshCa } from "../devplane/mesh-ca.js";
import { CertificateRejected, chainWithoutRoots, describeLeaf, splitPemCertificates, verifyPair } from "./verify.js";

let mesh: MeshCa;
let other: MeshCa;
const ID = "spiffe://cluster.local/ns/vmns/sa/vm-sa";
const HOUR = 3_600_000;

beforeAll(async () => {
  mesh = await createMeshCa();
  other = await createMeshCa();
});

function reason(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (error) {
    if (error instanceof CertificateRejected) return error.reason;
    throw error;
  }
}

describe("verifyPair", () => {
  it("verifying the same pair again still judges its validity at the new time, and a changed text afresh", async () => {
    const pair = await mesh.issueKeyPair({ identity: ID, ttlMs: HOUR });
    const input = { ...pair, rootPem: mesh.rootCertPem, expectedIdentity: ID };
    const first = verifyPair({ ...input, now: Date.now() });
    expect(verifyPair({ ...input, now: Date.now() }).info).toEqual(first.info);
    expect(reason(() => verifyPair({ ...input, now: Date.now() + 2 * HOUR }))).toBe("expired");
    expect(reason(() => verifyPair({ ...input, now: Date.now() - HOUR }))).toBe("not-yet-valid");
    expect(reason(() => verifyPair({ ...input, expectedIdentity: `${ID}-other`, now: Date.now() }))).toBe("identity");
    expect(reason(() => verifyPair({ ...input, rootPem: other.rootCertPem, now: Date.now() }))).toBe("chain");
    expect(reason(() => verifyPair({ ...input, now: Date.now() }))).toBeUndefined();
  });

  it("accepts a pair issued by the root for the expected identity, and describes it", async () => {
    const pair = await mesh.issueKeyPair({ identity: ID, ttlMs: 2 * HOUR });
    const { info } = verifyPair({ ...pair, rootPem: mesh.rootCertPem, expectedIdentity: ID, now: Date.now() });
    expect(info.uris).toEqual([ID]);
    expect(info.keyType).toBe("EC P-256");
    expect(info.issuer).toMatch(/istio-vm dev mesh CA/);
    expect(info.notAfter.getTime() - info.notBefore.getTime()).toBe(2 * HOUR + 60_000);
  });

  it.each([
    ["chain", async () => ({ pair: await other.issueKeyPair({ identity: ID }), now: Date.now() })],
    ["identity", async () => ({ pair: await mesh.issueKeyPair({ identity: `${ID}-other` }), now: Date.now() })],
    [
      "expired",
      async () => ({ pair: await mesh.issueKeyPair({ identity: ID, ttlMs: HOUR }), now: Date.now() + 2 * HOUR }),
    ],
    ["not-yet-valid", async () => ({ pair: await mesh.issueKeyPair({ identity: ID }), now: Date.now() - HOUR })],
    [
      "key-mismatch",
      async () => {
        const a = await mesh.issueKeyPair({ identity: ID });
        const b = await mesh.issueKeyPair({ identity: ID });
        return { pair: { keyPem: a.keyPem, chainPem: b.chainPem }, now: Date.now() };
      },
    ],
    [
      "malformed",
      async () => ({
        pair: { keyPem: (await mesh.issueKeyPair({ identity: ID })).keyPem, chainPem: "" },
        now: Date.now(),
      }),
    ],
  ])("rejects with reason %s", async (expected, make) => {
    const { pair, now } = await make();
    expect(reason(() => verifyPair({ ...pair, rootPem: mesh.rootCertPem, expectedIdentity: ID, now }))).toBe(expected);
  });

  it("accepts DNS names beside the identity, rejects a certificate without a SPIFFE identity", async () => {
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const certPem = await mesh.issue({ publicKey, identity: ID, dnsNames: ["vm.example"] });
    // DNS names are allowed beside the identity; a certificate naming no SPIFFE id is not.
    const keyPem = privateKey.export({ format: "pem", type: "pkcs8" }).toString();
    expect(
      reason(() =>
        verifyPair({ keyPem, chainPem: certPem, rootPem: mesh.rootCertPem, expectedIdentity: ID, now: Date.now() }),
      ),
    ).toBeUndefined();
    const noId = await mesh.issue({ publicKey, dnsNames: ["vm.example"] });
    expect(
      reason(() =>
        verifyPair({ keyPem, chainPem: noId, rootPem: mesh.rootCertPem, expectedIdentity: ID, now: Date.now() }),
      ),
    ).toBe("identity");
  });

  it("error messages never contain PEM material", async () => {
    const a = await mesh.issueKeyPair({ identity: ID });
    const b = await other.issueKeyPair({ identity: `${ID}-x` });
    for (const input of [
      { keyPem: a.keyPem, chainPem: b.chainPem },
      { keyPem: b.keyPem, chainPem: a.chainPem },
      { keyPem: "garbage", chainPem: a.chainPem },
    ]) {
      try {
        verifyPair({ ...input, rootPem: mesh.rootCertPem, expectedIdentity: ID, now: Date.now() });
      } catch (error) {
        expect((error as Error).message).not.toMatch(/BEGIN|MII/);
      }
    }
  });
});

describe("chain helpers", () => {
  it("drops the trailing root istiod appends, keeps intermediates", async () => {
    const pair = await mesh.issueKeyPair({ identity: ID });
    const chain = chainWithoutRoots([pair.certPem, mesh.rootCertPem], mesh.rootCertPem);
    expect(splitPemCertificates(chain)).toEqual([pair.certPem]);
    expect(splitPemCertificates(chainWithoutRoots([pair.certPem, other.rootCertPem], mesh.rootCertPem))).toHaveLength(
      2,
    );
  });

  it("describes a leaf without verifying it (status of a pair that fails)", async () => {
    const pair = await other.issueKeyPair({ identity: ID });
    expect(describeLeaf(pair.chainPem)?.uris).toEqual([ID]);
    expect(describeLeaf("nothing")).toBeUndefined();
  });
});
