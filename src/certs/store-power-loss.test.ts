/**
 * The certificate store under power loss (test/fakes/power-loss-fs.ts keeps only what an fsync covered): the power
 * goes at every step of a write, and whatever the disk kept — only the fsynced state, or also any directory's later
 * entries — the pair read after the reboot is the old one or the new one, whole, never a mix and never missing.
 * The SIGKILL test (test/integration/certs-crash.test.ts) covers the real file system; this one covers the fsyncs,
 * which a killed process cannot test: remove any of the four and a crash point below finds a pair that is gone.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { PowerLoss, PowerLossFileSystem } from "../../test/fakes/power-loss-fs.js";
import type { IssuedKeyPair, MeshCa } from "../devplane/mesh-ca.js";
import { createMeshCa } from "../devplane/mesh-ca.js";
import type { CertPair } from "./store.js";
import { CertStore } from "./store.js";

const ID = "spiffe://cluster.local/ns/vmns/sa/vm-sa";
const DIR = "/etc/certs";
let mesh: MeshCa;
let old: IssuedKeyPair;
let next: IssuedKeyPair;

beforeAll(async () => {
  mesh = await createMeshCa();
  old = await mesh.issueKeyPair({ identity: ID });
  next = await mesh.issueKeyPair({ identity: ID });
});

const store = (fs: PowerLossFileSystem): CertStore => new CertStore({ dir: DIR, fs, links: fs });
const check = (): { expectedIdentity: string; now: number } => ({ expectedIdentity: ID, now: Date.now() });
const same = (a: CertPair | undefined, b: IssuedKeyPair): boolean =>
  a?.keyPem === b.keyPem && a.chainPem === b.chainPem;

/** The disk after the reboot, in the ways a journal may have ordered what was not fsynced. */
const recoveries: Record<string, (fs: PowerLossFileSystem) => PowerLossFileSystem> = {
  "only what was fsynced": (fs) => fs.recover(),
  everything: (fs) => fs.recover(() => true),
  "the certificate directory's entries, not the new generation's": (fs) => fs.recover((p) => p === DIR),
  "the new generation's entries, not the certificate directory's": (fs) => fs.recover((p) => p !== DIR),
};

async function start(layout: "generations" | "plain files"): Promise<PowerLossFileSystem> {
  const fs = new PowerLossFileSystem();
  await fs.mkdirp(DIR);
  await fs.writeFileAtomic(`${DIR}/root-cert.pem`, mesh.rootCertPem);
  if (layout === "plain files") {
    // What `istio-vm install` leaves.
    await fs.writeFileAtomic(`${DIR}/key.pem`, old.keyPem);
    await fs.writeFileAtomic(`${DIR}/cert-chain.pem`, old.chainPem);
  } else {
    await store(fs).accept(old, check());
  }
  fs.syncAll();
  fs.fsyncs = 0;
  return fs;
}

describe("CertStore under power loss", () => {
  it("a write is four fsyncs", async () => {
    const fs = await start("generations");
    await store(fs).accept(next, check());
    expect(fs.fsyncs).toBe(4);
    expect(same(await store(fs.recover()).read(), next)).toBe(true);
  });

  for (const layout of ["generations", "plain files"] as const) {
    it(`from ${layout}: the old pair or the new one after power loss at any step, never a mix`, async () => {
      let crashes = 0;
      for (let steps = 0; ; steps++) {
        const fs = await start(layout);
        fs.crashAfter(steps);
        try {
          await store(fs).accept(next, check());
        } catch (error) {
          if (!(error instanceof PowerLoss)) throw error;
          crashes++;
          for (const [name, recover] of Object.entries(recoveries)) {
            const pair = await store(recover(fs)).read();
            expect(same(pair, old) || same(pair, next), `power lost after step ${steps}, ${name}`).toBe(true);
          }
          continue;
        }
        // The write finished: from here on only the new pair may come back.
        for (const [name, recover] of Object.entries(recoveries)) {
          expect(same(await store(recover(fs)).read(), next), `after the write, ${name}`).toBe(true);
        }
        break;
      }
      expect(crashes).toBeGreaterThan(layout === "plain files" ? 15 : 8);
    });
  }
});
