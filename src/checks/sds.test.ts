/** The SDS check against the real SDS server on a Unix socket, with certificates from the dev mesh CA. */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { loadConfig } from "../config/load.js";
import { createMeshCa } from "../devplane/mesh-ca.js";
import { systemClock } from "../platform/clock.js";
import { nodeFileSystem } from "../platform/fs.js";
import { silentLogger } from "../platform/logger.js";
import { nodeProcessRunner } from "../platform/process.js";
import { SdsServer } from "../sds/server.js";
import { sdsSocketPath } from "../sds/socket.js";
import type { CheckDeps } from "./check.js";
import { sdsCheck } from "./sds.js";
import { nodeLinkFileSystem } from "../platform/links.js";
import { fakePorts } from "../../test/fakes/ports.js";
import { checkDepsFrom } from "./check.js";

let root: string;
let server: SdsServer | undefined;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "sds-check-"));
  await mkdir(join(root, "etc/certs"), { recursive: true });
  await mkdir(join(root, "var/lib/istio/envoy"), { recursive: true });
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  await rm(root, { recursive: true, force: true });
});

async function deps(cluster = ""): Promise<CheckDeps> {
  await writeFile(join(root, "var/lib/istio/envoy/cluster.env"), cluster);
  const loaded = await loadConfig({ env: { ISTIO_VM_ROOT: root }, fs: nodeFileSystem });
  expect(loaded.problems).toEqual([]);
  const ports = fakePorts({
    env: { ISTIO_VM_ROOT: root },
    fs: nodeFileSystem,
    links: nodeLinkFileSystem,
    runner: nodeProcessRunner,
    clock: systemClock,
    hostname: () => "vm1",
  });
  return checkDepsFrom(ports, { loaded, logger: silentLogger, timeoutMs: 2000 });
}

async function serve(d: CheckDeps, chainPem: string, keyPem: string, rootPem: string): Promise<void> {
  server = new SdsServer({ socketPath: sdsSocketPath(d.values), fs: nodeFileSystem, logger: silentLogger });
  await server.listen();
  server.update({ chainPem, keyPem, rootPem });
}

describe("the sds check", () => {
  it("passes when the served chain is the store's, and fails naming both serials when a renewal was not pushed", async () => {
    const mesh = await createMeshCa();
    const identity = mesh.spiffeId("ns", "sa");
    const a = await mesh.issueKeyPair({ identity });
    const b = await mesh.issueKeyPair({ identity });
    const d = await deps();
    await writeFile(join(root, "etc/certs/cert-chain.pem"), a.chainPem);
    await serve(d, a.chainPem, a.keyPem, mesh.rootCertPem);
    const ok = await sdsCheck(d).run(new AbortController().signal);
    expect(ok.status).toBe("pass");
    expect(ok.summary).toMatch(/^SDS serves the store's chain \(serial [0-9a-f]+, v[0-9a-f]{16}\)$/);

    await writeFile(join(root, "etc/certs/cert-chain.pem"), b.chainPem);
    const stale = await sdsCheck(d).run(new AbortController().signal);
    expect(stale.status).toBe("fail");
    expect(stale.summary).toMatch(/^SDS serves serial [0-9a-f]+, the store holds [0-9a-f]+$/);
    expect(stale.hint).toContain("systemctl reload istio-vm-agent");
  });

  it("fails with a hint when nothing serves the socket (agent not running)", async () => {
    const result = await sdsCheck(await deps()).run(new AbortController().signal);
    expect(result.status).toBe("fail");
    expect(result.summary).toMatch(/^no SDS answer on .*workload-spiffe-uds\/socket \((ENOENT|UNAVAILABLE)\)$/);
    expect(result.hint).toContain("systemctl status istio-vm-agent");
  });

  it("is skipped on the legacy profile, whose Envoy reads the files", async () => {
    const result = await sdsCheck(await deps("ISTIO_CONTROL_PLANE=legacy\n")).run(new AbortController().signal);
    expect(result.status).toBe("skip");
  });
});
