import { lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { MeshCa } from "../devplane/mesh-ca.js";
import { createMeshCa } from "../devplane/mesh-ca.js";
import { nodeFileSystem } from "../platform/fs.js";
import { nodeLinkFileSystem } from "../platform/links.js";
import { fakeUsers } from "../../test/fakes/ports.js";
import { CertStore, resolveCertOwner } from "./store.js";
import { CertificateRejected } from "./verify.js";
import { requirements } from "../../test/support/requirements.js";

const ID = "spiffe://cluster.local/ns/vmns/sa/vm-sa";
let mesh: MeshCa;
let dir: string;

beforeAll(async () => {
  mesh = await createMeshCa();
});
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "istio-vm-store-"));
  await writeFile(join(dir, "root-cert.pem"), mesh.rootCertPem);
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function store(): CertStore {
  return new CertStore({ dir, fs: nodeFileSystem, links: nodeLinkFileSystem });
}
const check = (): { expectedIdentity: string; now: number } => ({ expectedIdentity: ID, now: Date.now() });

/** The generation directories (`..<time>.<pid>-<hex>`) in the store. */
async function generations(): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.startsWith("..") && n !== "..data");
}

describe("CertStore", () => {
  it("migrates the plain files of `istio-vm install` and swaps in a new pair through `..data`", async () => {
    const installed = await mesh.issueKeyPair({ identity: ID });
    await writeFile(join(dir, "key.pem"), installed.keyPem, { mode: 0o600 });
    await writeFile(join(dir, "cert-chain.pem"), installed.chainPem);
    expect(await store().read()).toEqual({ keyPem: installed.keyPem, chainPem: installed.chainPem });

    const next = await mesh.issueKeyPair({ identity: ID });
    await store().accept({ keyPem: next.keyPem, chainPem: next.chainPem }, check());
    expect(await readlink(join(dir, "key.pem"))).toBe("..data/key.pem");
    expect(await readlink(join(dir, "cert-chain.pem"))).toBe("..data/cert-chain.pem");
    expect(await readFile(join(dir, "key.pem"), "utf8")).toBe(next.keyPem);
    expect(await readFile(join(dir, "cert-chain.pem"), "utf8")).toBe(next.chainPem);
    expect(await readFile(join(dir, "root-cert.pem"), "utf8")).toBe(mesh.rootCertPem);
    const data = await readlink(join(dir, "..data"));
    expect(data).toMatch(/^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d+-[0-9a-f]+$/);
    expect((await stat(join(dir, data, "key.pem"))).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, data, "cert-chain.pem"))).mode & 0o777).toBe(0o644);
    expect((await stat(join(dir, "root-cert.pem"))).mode & 0o777).toBe(0o644);
    // The installed pair is kept as the previous generation (a reader that resolved `..data` just before finishes).
    const kept = await generations();
    expect(kept).toHaveLength(2);
    const previous = kept.find((n) => n !== data) ?? "";
    expect(await readFile(join(dir, previous, "key.pem"), "utf8")).toBe(installed.keyPem);
    // What `ls` shows is what the original recipe had: the three files.
    expect((await readdir(dir)).filter((n) => !n.startsWith(".")).sort()).toEqual([
      "cert-chain.pem",
      "key.pem",
      "root-cert.pem",
    ]);
  });

  it("migrates the `live` -> `pairs/<id>` layout of earlier versions and removes it", async () => {
    const old = await mesh.issueKeyPair({ identity: ID });
    await mkdir(join(dir, "pairs", "0123456789abcdef"), { recursive: true });
    await writeFile(join(dir, "pairs", "0123456789abcdef", "key.pem"), old.keyPem, { mode: 0o600 });
    await writeFile(join(dir, "pairs", "0123456789abcdef", "cert-chain.pem"), old.chainPem);
    await symlink("pairs/0123456789abcdef", join(dir, "live"));
    await symlink("live/key.pem", join(dir, "key.pem"));
    await symlink("live/cert-chain.pem", join(dir, "cert-chain.pem"));
    expect(await store().read()).toEqual({ keyPem: old.keyPem, chainPem: old.chainPem });

    const next = await mesh.issueKeyPair({ identity: ID });
    await store().accept({ keyPem: next.keyPem, chainPem: next.chainPem }, check());
    expect(await store().read()).toEqual({ keyPem: next.keyPem, chainPem: next.chainPem });
    expect(await readlink(join(dir, "key.pem"))).toBe("..data/key.pem");
    await expect(lstat(join(dir, "live"))).rejects.toThrow(/ENOENT/);
    await expect(lstat(join(dir, "pairs"))).rejects.toThrow(/ENOENT/);
    expect(await generations()).toHaveLength(2);
  });

  it("writes the first pair into a directory holding only root-cert.pem (the istiod profile's first certificate)", async () => {
    expect(await store().read()).toBeUndefined();
    const pair = await mesh.issueKeyPair({ identity: ID });
    await store().accept({ keyPem: pair.keyPem, chainPem: pair.chainPem }, check());
    expect(await readFile(join(dir, "key.pem"), "utf8")).toBe(pair.keyPem);
    expect(await readFile(join(dir, "cert-chain.pem"), "utf8")).toBe(pair.chainPem);
    expect(await generations()).toHaveLength(1);
  });

  it("keeps only the current and previous generations", async () => {
    for (let i = 0; i < 4; i++) {
      const pair = await mesh.issueKeyPair({ identity: ID });
      await store().accept({ keyPem: pair.keyPem, chainPem: pair.chainPem }, check());
    }
    expect(await generations()).toHaveLength(2);
  });

  it("leaves the generations of another live writer alone and removes those of a dead one", async () => {
    const pair = await mesh.issueKeyPair({ identity: ID });
    await store().accept({ keyPem: pair.keyPem, chainPem: pair.chainPem }, check());
    // pid 1 is always alive: a writer (say the agent) that has written a generation and is about to swap it in.
    const alive = "..2026_01_01_00_00_00.1-0a0b0c0d";
    const dead = "..2026_01_01_00_00_00.999999999-0a0b0c0d";
    for (const name of [alive, dead]) await mkdir(join(dir, name));
    await store().accept({ keyPem: pair.keyPem, chainPem: pair.chainPem }, check());
    const left = await generations();
    expect(left).toContain(alive);
    expect(left).not.toContain(dead);
    expect(left).toHaveLength(3);
  });
  it("refuses a pair that fails verification and leaves the old pair untouched", async () => {
    const good = await mesh.issueKeyPair({ identity: ID });
    await store().accept({ keyPem: good.keyPem, chainPem: good.chainPem }, check());
    const wrong = await mesh.issueKeyPair({ identity: `${ID}-other` });
    await expect(store().accept({ keyPem: wrong.keyPem, chainPem: wrong.chainPem }, check())).rejects.toBeInstanceOf(
      CertificateRejected,
    );
    const mismatched = await mesh.issueKeyPair({ identity: ID });
    await expect(store().accept({ keyPem: good.keyPem, chainPem: mismatched.chainPem }, check())).rejects.toMatchObject(
      {
        reason: "key-mismatch",
      },
    );
    expect(await store().read()).toEqual({ keyPem: good.keyPem, chainPem: good.chainPem });
  });

  it("does not fail a finished swap when a leftover generation may not be removed (EACCES)", async () => {
    const pair = await mesh.issueKeyPair({ identity: ID });
    const rootOwned = "..2026_01_01_00_00_00.999999999-0a0b0c0d";
    await mkdir(join(dir, rootOwned));
    const links = {
      ...nodeLinkFileSystem,
      removeTree: (path: string): Promise<void> =>
        path.endsWith(rootOwned)
          ? Promise.reject(Object.assign(new Error(`EACCES: ${path}`), { code: "EACCES" }))
          : nodeLinkFileSystem.removeTree(path),
    };
    const denied = new CertStore({ dir, fs: nodeFileSystem, links });
    await denied.accept({ keyPem: pair.keyPem, chainPem: pair.chainPem }, check());
    expect(await denied.read()).toEqual({ keyPem: pair.keyPem, chainPem: pair.chainPem });
    expect(await generations()).toContain(rootOwned);
  });

  it("removes temporary links left by a writer that died, but not those of a live one", async () => {
    const pair = await mesh.issueKeyPair({ identity: ID });
    await symlink("..x", join(dir, "...data.tmp-999999999-ffff"));
    await symlink("..x", join(dir, `...data.tmp-${process.pid}-0c0d`));
    await store().accept({ keyPem: pair.keyPem, chainPem: pair.chainPem }, check());
    await expect(lstat(join(dir, "...data.tmp-999999999-ffff"))).rejects.toThrow(/ENOENT/);
    expect(await readdir(dir)).toContain(`...data.tmp-${process.pid}-0c0d`);
  });

  it("reads nothing when only half a pair is there", async () => {
    const pair = await mesh.issueKeyPair({ identity: ID });
    await writeFile(join(dir, "cert-chain.pem"), pair.chainPem);
    expect(await store().read()).toBeUndefined();
  });

  it("fails clearly without root-cert.pem", async () => {
    await rm(join(dir, "root-cert.pem"));
    const pair = await mesh.issueKeyPair({ identity: ID });
    await expect(store().accept(pair, check())).rejects.toThrow(/root-cert.pem is missing/);
  });
});

const notRoot = requirements({ root: true });

describe.skipIf(notRoot !== undefined)("CertStore ownership (root)", () => {
  it("gives the pair directory, both files and the links to the certificate owner", async () => {
    const owner = { uid: 65534, gid: 65534 };
    const owned = new CertStore({ dir, fs: nodeFileSystem, links: nodeLinkFileSystem, owner });
    const pair = await mesh.issueKeyPair({ identity: ID });
    await owned.accept({ keyPem: pair.keyPem, chainPem: pair.chainPem }, check());
    const data = await readlink(join(dir, "..data"));
    for (const path of [join(dir, data), join(dir, data, "key.pem"), join(dir, data, "cert-chain.pem")]) {
      expect((await stat(path)).uid).toBe(65534);
      expect((await stat(path)).gid).toBe(65534);
    }
    for (const link of ["..data", "key.pem", "cert-chain.pem"]) expect((await lstat(join(dir, link))).uid).toBe(65534);
  });
});

describe("resolveCertOwner", () => {
  const users = fakeUsers([{ name: "istio-proxy", uid: 998, gid: 997 }]);

  it("looks up ENVOY_USER when root, and does nothing otherwise", async () => {
    expect(await resolveCertOwner("istio-proxy", { users, uid: 0 })).toEqual({ uid: 998, gid: 997 });
    expect(await resolveCertOwner("istio-proxy", { users, uid: 1000 })).toBeUndefined();
    expect(await resolveCertOwner("nobody-here", { users, uid: 0 })).toBeUndefined();
  });
});
