/**
 * `istio-vm bundle --workload-group` against the dev control plane (istiod profile), as the built CLI in a
 * subprocess: the WorkloadGroup is created from --labels, --ports, --service-account and --probe (or an existing one
 * is used as it is), and the bundle's cluster.env makes the agent auto-register into it and run its probe.
 */
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseEnvFile } from "../../src/config/env-file.js";
import type { DevPlane } from "../../src/devplane/dev-plane.js";
import { startDevPlane } from "../../src/devplane/dev-plane.js";
import { parseCidr } from "../../src/devplane/ip-allocator.js";
import { silentLogger } from "../../src/platform/logger.js";
import type { CliResult } from "../support/cli.js";
import { runCli } from "../support/cli.js";
import { requirements } from "../support/requirements.js";

const missing = requirements({ tools: ["tar"] });

describe.skipIf(missing !== undefined)("bundle --workload-group (istiod dev plane)", () => {
  let plane: DevPlane | undefined;
  let dir = "";
  const cli = (args: readonly string[]): Promise<CliResult> =>
    runCli(args, {
      env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: dir, KUBECONFIG: join(dir, "kubeconfig") },
      cwd: dir,
    });
  const store = () => {
    if (plane === undefined) throw new Error("no dev plane");
    return plane.context.store;
  };
  async function clusterEnv(archive: string): Promise<Record<string, string>> {
    const out = join(dir, `${archive}.x`);
    await mkdir(out);
    execFileSync("tar", ["-xzf", join(dir, archive), "-C", out]);
    const text = await readFile(join(out, "cluster.env"), "utf8");
    return Object.fromEntries(parseEnvFile(text, "cluster.env").map((e) => [e.key, e.value]));
  }

  beforeAll(async () => {
    plane = await startDevPlane({
      profile: "istiod",
      listen: [{ host: "127.0.0.1", port: 0 }],
      serviceCidrs: ["10.96.0.0/12"].map(parseCidr),
      serviceCidrApi: true,
      lbIpBase: "10.128.0.6",
      lbDelayMs: 0,
      trustDomain: "cluster.local",
      workloadCertTtlMs: 19 * 3600_000,
      services: [],
      logger: silentLogger,
    });
    dir = await mkdtemp(join(tmpdir(), "istio-vm-wg-"));
    await writeFile(join(dir, "kubeconfig"), plane.kubeconfig(), { mode: 0o600 });
    store().create("serviceaccounts", { metadata: { name: "vm", namespace: "default" } });
  });
  afterAll(async () => {
    await plane?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("creates the group from the flags and writes AUTO_REGISTER_GROUP, labels and the probe into cluster.env", async () => {
    const probe = '{"tcpSocket":{"port":8080},"periodSeconds":2,"failureThreshold":2}';
    const result = await cli([
      ...["bundle", "-o", "vm.tgz", "--no-deb", "-n", "default", "-s", "vm"],
      ...["--workload-group", "vms", "--labels", "app=vm-app,tier=db", "--ports", "http:8080", "--probe", probe],
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain("created WorkloadGroup default/vms");
    const group = store().get("workloadgroups", "default", "vms");
    expect(group).toMatchObject({
      apiVersion: "networking.istio.io/v1",
      kind: "WorkloadGroup",
      spec: {
        metadata: { labels: { app: "vm-app", tier: "db" } },
        template: { serviceAccount: "vm", ports: { http: 8080 } },
        probe: { tcpSocket: { port: 8080 }, periodSeconds: 2, failureThreshold: 2 },
      },
    });
    const env = await clusterEnv("vm.tgz");
    expect(env["ISTIO_META_AUTO_REGISTER_GROUP"]).toBe("vms");
    expect(env["ISTIO_META_WORKLOAD_NAME"]).toBe("vms");
    expect(env["SERVICE_ACCOUNT"]).toBe("vm");
    expect(JSON.parse(env["ISTIO_METAJSON_LABELS"] ?? "{}")).toEqual({
      app: "vm-app",
      tier: "db",
      "service.istio.io/canonical-name": "vm-app",
      "service.istio.io/canonical-revision": "latest",
    });
    expect(JSON.parse(env["PROXY_CONFIG"] ?? "{}")).toMatchObject({
      readinessProbe: { tcpSocket: { port: 8080 }, periodSeconds: 2, failureThreshold: 2 },
    });
  });

  it("uses an existing group as it is, warning that the flags do not apply", async () => {
    const result = await cli([
      ...["bundle", "-o", "again.tgz", "--no-deb", "-n", "default", "-s", "vm"],
      ...["--workload-group", "vms", "--labels", "app=other"],
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stderr).toContain("using WorkloadGroup default/vms");
    expect(result.stderr).toMatch(/warning: WorkloadGroup default\/vms exists: its own labels, ports and probe apply/);
    expect(JSON.parse((await clusterEnv("again.tgz"))["ISTIO_METAJSON_LABELS"] ?? "{}")).toMatchObject({
      app: "vm-app",
    });
  });

  it("refuses another service account, a bad probe and group flags without a group, writing nothing", async () => {
    const otherSa = await cli(["bundle", "-o", "sa.tgz", "--no-deb", "-n", "default", "--workload-group", "vms"]);
    expect(otherSa.code).toBe(2);
    expect(otherSa.stderr).toContain("runs as service account vm, the bundle's credentials are for default");
    expect(otherSa.stderr).toContain("--service-account vm");
    const badProbe = await cli([
      ...["bundle", "-o", "probe.tgz", "--no-deb", "-n", "default", "-s", "vm", "--workload-group", "new"],
      ...["--probe", '{"httpGet":{"port":0},"exec":{"command":[]}}'],
    ]);
    expect(badProbe.code).toBe(2);
    expect(badProbe.stderr).toContain("exactly one of httpGet, tcpSocket, exec is needed (got 2)");
    expect(store().tryGet("workloadgroups", "default", "new")).toBeUndefined();
    const orphan = await cli(["bundle", "-o", "orphan.tgz", "--no-deb", "--labels", "app=x"]);
    expect(orphan.code).toBe(2);
    expect(orphan.stderr).toContain("add --workload-group NAME");
    for (const name of ["sa.tgz", "probe.tgz", "orphan.tgz"])
      expect(await stat(join(dir, name)).catch(() => undefined)).toBeUndefined();
  });
});
