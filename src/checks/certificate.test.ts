import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { fakePorts } from "../../test/fakes/ports.js";
import { CertStore } from "../certs/store.js";
import { loadConfig } from "../config/load.js";
import { createMeshCa } from "../devplane/mesh-ca.js";
import { systemClock } from "../platform/clock.js";
import type { FileSystem } from "../platform/fs.js";
import { nodeFileSystem } from "../platform/fs.js";
import { nodeLinkFileSystem } from "../platform/links.js";
import { silentLogger } from "../platform/logger.js";
import { certificateCheck } from "./certificate.js";
import { checkDepsFrom } from "./check.js";

let dir: string | undefined;
afterEach(async () => {
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

describe("certificate check", () => {
  it("reads the pair as the store's readers must: a renewal between the key and the chain tears nothing", async () => {
    const mesh = await createMeshCa();
    const identity = mesh.spiffeId("shop", "vm");
    const certs = await mkdtemp(join(tmpdir(), "istio-vm-check-cert-"));
    dir = certs;
    await writeFile(join(certs, "root-cert.pem"), mesh.rootCertPem);
    const store = new CertStore({ dir: certs, fs: nodeFileSystem, links: nodeLinkFileSystem });
    const first = await mesh.issueKeyPair({ identity, ttlMs: 72 * 3600_000 });
    await store.accept(first, { expectedIdentity: identity, now: Date.now() });
    const second = await mesh.issueKeyPair({ identity, ttlMs: 72 * 3600_000 });

    // The agent renews right after the check has read a key and before it reads a chain.
    let keyRead: () => void = () => undefined;
    const keyDone = new Promise<void>((resolve) => (keyRead = resolve));
    let renewed = false;
    const racing: FileSystem = {
      ...nodeFileSystem,
      async readTextIfExists(path) {
        if (path.endsWith("/key.pem")) {
          const text = await nodeFileSystem.readTextIfExists(path);
          keyRead();
          return text;
        }
        if (path.endsWith("/cert-chain.pem") && !renewed) {
          renewed = true;
          await keyDone;
          await store.accept(second, { expectedIdentity: identity, now: Date.now() });
        }
        return await nodeFileSystem.readTextIfExists(path);
      },
    };
    const env = { OUTPUT_CERTS: certs, POD_NAMESPACE: "shop", SERVICE_ACCOUNT: "vm" };
    const loaded = await loadConfig({ env, fs: new MemoryFileSystem() });
    expect(loaded.problems).toEqual([]);
    const ports = fakePorts({ env, fs: racing, links: nodeLinkFileSystem, clock: systemClock });
    const result = await certificateCheck(checkDepsFrom(ports, { loaded, logger: silentLogger, timeoutMs: 1000 })).run(
      new AbortController().signal,
    );
    expect(renewed).toBe(true);
    expect(result.summary).toMatch(/^spiffe:\/\/cluster\.local\/ns\/shop\/sa\/vm valid until /);
    expect(result.status).toBe("pass");
  });
});
