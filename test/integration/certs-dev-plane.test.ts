/**
 * The whole certificate path with nothing faked: `istio-vm dev` (in this process, with its CA attached as a dev
 * service) plays the cluster; the admin's `istio-vm certs SA NS` fetches the bootstrap credentials over the Kubernetes
 * API; the VM's `istio-vm certs renew` then gets a new certificate from the dev CA (legacy: mTLS with the bootstrap
 * pair; istiod: the service-account token first, mTLS after), and `istio-vm certs status` accepts it.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { DevPlane } from "../../src/devplane/dev-plane.js";
import { startDevPlane } from "../../src/devplane/dev-plane.js";
import { devCaService } from "../../src/devplane/ca-service.js";
import type { DevCaServer } from "../../src/devplane/ca-server.js";
import { parseCidr } from "../../src/devplane/ip-allocator.js";
import { silentLogger } from "../../src/platform/logger.js";
import { runCli } from "../support/cli.js";

let plane: DevPlane | undefined;
let dir: string | undefined;
afterEach(async () => {
  await plane?.close();
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  plane = undefined;
  dir = undefined;
});

describe.each(["legacy", "istiod"] as const)("bootstrap and renewal against istio-vm dev (%s)", (profile) => {
  it("admin `certs` → VM `certs renew` → `certs status` ok", async () => {
    let ca: DevCaServer | undefined;
    plane = await startDevPlane({
      profile,
      listen: [{ host: "127.0.0.1", port: 0 }],
      serviceCidrs: [parseCidr("10.96.0.0/12")],
      serviceCidrApi: true,
      lbIpBase: "10.128.0.6",
      lbDelayMs: 0,
      trustDomain: "cluster.local",
      workloadCertTtlMs: 19 * 3600_000,
      services: [
        devCaService({
          env: { ISTIO_VM_DEV_CA_MAX_TTL: "2h" },
          onStarted: (server) => (ca = server),
        }),
      ],
      logger: silentLogger,
    });
    if (ca === undefined) throw new Error("the dev CA did not start");
    dir = await mkdtemp(join(tmpdir(), `istio-vm-certs-dev-${profile}-`));
    const kubeconfig = join(dir, "kubeconfig");
    await writeFile(kubeconfig, plane.kubeconfig(), { mode: 0o600 });
    const certsDir = join(dir, "etc-certs");
    const admin = await runCli(
      ["certs", "default", "default", "-o", certsDir, ...(profile === "legacy" ? ["--all"] : [])],
      { env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: dir, KUBECONFIG: kubeconfig } },
    );
    expect(admin.code, admin.stderr).toBe(0);

    const vm = {
      PATH: process.env["PATH"] ?? "/usr/bin:/bin",
      ISTIO_VM_ROOT: dir,
      ISTIO_CONTROL_PLANE: profile,
      CA_ADDR: `127.0.0.1:${ca.port}`,
      ISTIOD_SAN: profile === "legacy" ? "istio-ca" : "istiod.istio-system.svc",
      OUTPUT_CERTS: certsDir,
      ISTIO_TOKEN_FILE: join(certsDir, "istio-token"),
      POD_NAMESPACE: "default",
      SERVICE_ACCOUNT: "default",
      SECRET_TTL: "90m",
    };
    const first = await runCli(["certs", "renew", "--json"], { env: vm });
    expect(first.code, first.stderr).toBe(0);
    expect(JSON.parse(first.stdout)).toMatchObject({
      identity: "spiffe://cluster.local/ns/default/sa/default",
      authenticatedBy: profile === "legacy" ? "certificate" : "token",
    });
    const second = await runCli(["certs", "renew", "--json"], { env: vm });
    expect(second.code, second.stderr).toBe(0);
    const renewed = JSON.parse(second.stdout) as { authenticatedBy: string; notBefore: string; notAfter: string };
    expect(renewed.authenticatedBy).toBe("certificate");
    // SECRET_TTL=90m is within the CA's 2 h cap (mesh-ca backdates NotBefore by a minute).
    expect(Date.parse(renewed.notAfter) - Date.parse(renewed.notBefore)).toBe(91 * 60_000);
    // Above the cap the CA refuses, as istiod does with MAX_WORKLOAD_CERT_TTL, and the pair stays.
    const tooLong = await runCli(["certs", "renew"], { env: { ...vm, SECRET_TTL: "3h" } });
    expect(tooLong.code).toBe(1);
    expect(tooLong.stderr).toMatch(/greater than the max allowed TTL/);
    const status = await runCli(["certs", "status"], { env: vm });
    expect(status.code, status.stdout).toBe(0);
    expect(status.stdout).toMatch(/^chain\s+ok/m);
    expect(ca.calls.map((c) => c.outcome)).toEqual(["issued", "issued", "INTERNAL"]);
  });
});
