/**
 * `istio-vm bundle` against the dev control plane (both profiles) and `istio-vm install` of that bundle into a
 * relocated root (ISTIO_VM_ROOT: files only, no dpkg or systemctl on this machine), as the built CLI in a
 * subprocess: owners and modes of docs/protocols.md, idempotence, a tampered member, dry run, the dhclient resolver
 * files.
 */
import { execFileSync } from "node:child_process";
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DevPlane } from "../../src/devplane/dev-plane.js";
import { startDevPlane } from "../../src/devplane/dev-plane.js";
import { parseCidr } from "../../src/devplane/ip-allocator.js";
import type { Profile } from "../../src/devplane/seed.js";
import { silentLogger } from "../../src/platform/logger.js";
import { readTar, writeTar } from "../../src/provision/tar.js";
import type { CliResult } from "../support/cli.js";
import { runCli } from "../support/cli.js";
import { requirements } from "../support/requirements.js";

const missing = requirements({ tools: ["dpkg-deb", "tar"] });
const PROXY_UID = 4242;

interface World {
  readonly plane: DevPlane;
  readonly dir: string;
  readonly deb: string;
  cli(args: readonly string[], env?: Record<string, string>): Promise<CliResult>;
}

async function startWorld(profile: Profile): Promise<World> {
  const plane = await startDevPlane({
    profile,
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
  const dir = await mkdtemp(join(tmpdir(), `istio-vm-provision-${profile}-`));
  const kubeconfig = join(dir, "kubeconfig");
  await writeFile(kubeconfig, plane.kubeconfig(), { mode: 0o600 });
  // A small but real Debian package, so dpkg-deb reads its name and version.
  const pkg = join(dir, "pkg");
  await mkdir(join(pkg, "DEBIAN"), { recursive: true });
  await writeFile(
    join(pkg, "DEBIAN/control"),
    "Package: istio-vm-agent\nVersion: 9.8.7\nArchitecture: amd64\nMaintainer: t <t@example.org>\nDescription: test\n",
  );
  const deb = join(dir, "agent.deb");
  execFileSync("dpkg-deb", ["--build", "--root-owner-group", pkg, deb], { stdio: "ignore" });
  return {
    plane,
    dir,
    deb,
    cli: (args, env = {}) =>
      runCli(args, {
        env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: dir, KUBECONFIG: kubeconfig, ...env },
        cwd: dir,
      }),
  };
}

/** A relocated VM root with istio-proxy in its passwd and a DHCP-written resolv.conf. */
async function makeRoot(parent: string, name: string): Promise<string> {
  const root = join(parent, name);
  await mkdir(join(root, "etc/dhcp/dhclient-enter-hooks.d"), { recursive: true });
  await writeFile(
    join(root, "etc/passwd"),
    `root:x:0:0:root:/root:/bin/bash\nistio-proxy:x:${PROXY_UID}:${PROXY_UID}::/var/lib/istio:/usr/sbin/nologin\n`,
  );
  await writeFile(join(root, "etc/resolv.conf"), "domain example.internal\nnameserver 192.0.2.53\n");
  return root;
}

async function owners(root: string, paths: readonly string[]): Promise<string[]> {
  return Promise.all(
    paths.map(async (p) => {
      const s = await stat(join(root, p));
      return `${p} ${s.uid}:${s.gid} ${(s.mode & 0o777).toString(8)}`;
    }),
  );
}

describe.skipIf(missing !== undefined)("bundle and install (relocated root)", () => {
  let world: World | undefined;
  const w = (): World => {
    if (world === undefined) throw new Error("no world");
    return world;
  };
  beforeAll(async () => {
    world = await startWorld("legacy");
  });
  afterAll(async () => {
    await world?.plane.close();
    if (world !== undefined) await rm(world.dir, { recursive: true, force: true });
  });

  it("bundles from the cluster: 0600 archive, secrets 0600 inside, manifest of every member", async () => {
    const result = await w().cli([
      "bundle",
      "-o",
      "vm.tgz",
      "--deb",
      w().deb,
      "--svc-ip",
      "10.0.0.5",
      "--inbound-ports",
      "8080",
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain("profile legacy, istio-vm-agent 9.8.7");
    const path = join(w().dir, "vm.tgz");
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    const listing = execFileSync("tar", ["-tvzf", path], { encoding: "utf8" });
    expect(listing).toMatch(/^-rw------- root\/root .* key\.pem$/m);
    expect(listing).toMatch(/^-rw-r--r-- root\/root .* cert-chain\.pem$/m);
    expect(listing).toMatch(/ istio-vm-agent_9\.8\.7_amd64\.deb$/m);
    const extract = join(w().dir, "x");
    await mkdir(extract);
    execFileSync("tar", ["-xzf", path, "-C", extract]);
    expect(execFileSync("sha256sum", ["-c", "SHA256SUMS"], { cwd: extract, encoding: "utf8" })).not.toMatch(/FAILED/);
    expect(await readFile(join(extract, "sidecar.env"), "utf8")).toMatch(/^ISTIO_SVC_IP=10\.0\.0\.5$/m);
    expect(await readFile(join(extract, "kubedns"), "utf8")).toContain("address=/istio-pilot/");
  });

  it("rejects bad sidecar settings all at once, and a missing .deb with a hint", async () => {
    const bad = await w().cli([
      "bundle",
      "-o",
      "bad.tgz",
      "--deb",
      w().deb,
      "--svc-ip",
      "nope",
      "--set",
      "ISTIO_INBOUND_PORTS=99999",
      "--set",
      "NOT_A_VAR=1",
    ]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("ISTIO_SVC_IP");
    expect(bad.stderr).toContain("ISTIO_INBOUND_PORTS");
    expect(bad.stderr).toContain("NOT_A_VAR");
    const noDeb = await w().cli(["bundle", "-o", "x.tgz"]);
    expect(noDeb.code).toBe(2);
    expect(noDeb.stderr).toMatch(/no \.deb at .*dist\/istio-vm-agent_.*_amd64\.deb/);
    expect(noDeb.stderr).toContain("npm run package");
  });

  it("bundles --from the directory that cluster-env, dnsmasq and certs wrote", async () => {
    const out = join(w().dir, "out");
    await mkdir(out, { recursive: true });
    expect((await w().cli(["cluster-env", "-o", join(out, "cluster.env")])).code).toBe(0);
    expect((await w().cli(["dnsmasq", "-o", join(out, "kubedns")])).code).toBe(0);
    expect((await w().cli(["certs", "default", "default", "--all", "-o", out])).code).toBe(0);
    const result = await w().cli(["bundle", "--from", out, "--no-deb", "-o", "from.tgz", "--json"]);
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout) as { profile: string; deb: unknown; members: { name: string }[] };
    expect(report.profile).toBe("legacy");
    expect(report.deb).toBeNull();
    expect(report.members.map((m) => m.name)).toEqual([
      "cluster.env",
      "kubedns",
      "root-cert.pem",
      "cert-chain.pem",
      "key.pem",
    ]);
  });

  it("installs: files with docs/protocols.md owners and modes, dhclient hook, loopback first; a second run changes nothing", async () => {
    const root = await makeRoot(w().dir, "vm1");
    const env = { ISTIO_VM_ROOT: root };
    const first = await w().cli(["install", "vm.tgz", "--resolver", "dhclient", "--no-checks"], env);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/^cluster\.env\s+create\s/m);
    expect(first.stdout).toMatch(/^package\s+skip\s/m);
    expect(
      await owners(root, [
        "var/lib/istio/envoy/cluster.env",
        "var/lib/istio/envoy/sidecar.env",
        "etc/certs/root-cert.pem",
        "etc/certs/cert-chain.pem",
        "etc/certs/key.pem",
        "etc/dnsmasq.d/kubedns",
        "etc/dhcp/dhclient-enter-hooks.d/istio-vm",
      ]),
    ).toEqual([
      "var/lib/istio/envoy/cluster.env 0:0 644",
      "var/lib/istio/envoy/sidecar.env 0:0 644",
      `etc/certs/root-cert.pem ${PROXY_UID}:${PROXY_UID} 644`,
      `etc/certs/cert-chain.pem ${PROXY_UID}:${PROXY_UID} 644`,
      `etc/certs/key.pem ${PROXY_UID}:${PROXY_UID} 600`,
      "etc/dnsmasq.d/kubedns 0:0 644",
      "etc/dhcp/dhclient-enter-hooks.d/istio-vm 0:0 644",
    ]);
    expect(await readFile(join(root, "etc/resolv.conf"), "utf8")).toBe(
      "domain example.internal\nnameserver 127.0.0.1\nnameserver 192.0.2.53\n",
    );
    expect(await readFile(join(root, "var/lib/istio/envoy/sidecar.env"), "utf8")).toMatch(
      /^ISTIO_INBOUND_PORTS=8080$/m,
    );
    const config = await w().cli(["config", "--json"], env);
    expect(config.stdout).toContain("10.0.0.5");

    const before = await stat(join(root, "etc/certs/key.pem"));
    const second = await w().cli(["install", "vm.tgz", "--resolver", "dhclient", "--json"], env);
    expect(second.code, second.stderr).toBe(0);
    const report = JSON.parse(second.stdout) as { changed: boolean; steps: { id: string; action: string }[] };
    expect(report.changed).toBe(false);
    expect(report.steps.filter((s) => s.action !== "unchanged" && s.action !== "skip")).toEqual([]);
    const after = await stat(join(root, "etc/certs/key.pem"));
    expect(after.ino).toBe(before.ino);
    expect(after.mtimeMs).toBe(before.mtimeMs);
  });

  it("keeps the admin's sidecar.env lines and replaces only the keys it sets", async () => {
    const root = await makeRoot(w().dir, "vm-sidecar");
    await mkdir(join(root, "var/lib/istio/envoy"), { recursive: true });
    await writeFile(
      join(root, "var/lib/istio/envoy/sidecar.env"),
      "# my notes\nISTIO_INBOUND_PORTS=1234\nENVOY_LOG_LEVEL=debug\n",
    );
    const result = await w().cli(["install", "vm.tgz", "--resolver", "static", "--set", "ISTIO_SVC_IP=10.0.0.9"], {
      ISTIO_VM_ROOT: root,
    });
    expect(result.code, result.stderr).toBe(0);
    const text = await readFile(join(root, "var/lib/istio/envoy/sidecar.env"), "utf8");
    expect(text).toMatch(/^# my notes\nISTIO_INBOUND_PORTS=8080\nENVOY_LOG_LEVEL=debug\n/);
    expect(text).toMatch(/^ISTIO_SVC_IP=10\.0\.0\.9$/m);
    expect(text).not.toContain("10.0.0.5");
  });

  it("refuses a tampered bundle, naming the member, and changes nothing", async () => {
    const root = await makeRoot(w().dir, "vm-tamper");
    const original = await readFile(join(w().dir, "vm.tgz"));
    const members = readTar(gunzipSync(original), "vm.tgz").map((m) =>
      m.name === "kubedns"
        ? { ...m, data: Buffer.from(Buffer.from(m.data).toString().replace("10.128.0.8", "10.66.6.6")) }
        : m,
    );
    const tampered = join(w().dir, "tampered.tgz");
    await writeFile(tampered, gzipSync(writeTar(members, { mtimeMs: 0, gzip: false })));
    await chmod(tampered, 0o600);
    const result = await w().cli(["install", "tampered.tgz"], { ISTIO_VM_ROOT: root });
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/member kubedns does not match SHA256SUMS/);
    expect(execFileSync("find", [root, "-type", "f"], { encoding: "utf8" }).trim().split("\n").sort()).toEqual(
      [join(root, "etc/passwd"), join(root, "etc/resolv.conf")].sort(),
    );
  });

  it("--dry-run lists the steps and writes nothing", async () => {
    const root = await makeRoot(w().dir, "vm-dry");
    const result = await w().cli(["install", "vm.tgz", "--dry-run", "--resolver", "dhclient"], { ISTIO_VM_ROOT: root });
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain("dry run");
    for (const step of ["cluster.env", "key.pem", "kubedns", "istio-vm-local", "istio-vm", "resolv.conf"]) {
      expect(result.stdout).toMatch(new RegExp(`^${step.replace(".", "\\.")}\\s+(create|update)\\s`, "m"));
    }
    expect(await readFile(join(root, "etc/resolv.conf"), "utf8")).toBe(
      "domain example.internal\nnameserver 192.0.2.53\n",
    );
    await expect(stat(join(root, "etc/certs"))).rejects.toThrow();
  });

  it("needs ISTIO_SVC_IP before changing anything", async () => {
    const root = await makeRoot(w().dir, "vm-noip");
    expect((await w().cli(["bundle", "--deb", w().deb, "-o", "noip.tgz"])).code).toBe(0);
    const result = await w().cli(["install", "noip.tgz"], { ISTIO_VM_ROOT: root });
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("ISTIO_SVC_IP");
    expect(result.stderr).toContain("nothing was changed");
    await expect(stat(join(root, "etc/certs"))).rejects.toThrow();
  });
});

describe.skipIf(missing !== undefined)("bundle and install, istiod profile", () => {
  let world: World | undefined;
  afterAll(async () => {
    await world?.plane.close();
    if (world !== undefined) await rm(world.dir, { recursive: true, force: true });
  });

  it("carries root-cert.pem and istio-token; install puts the token 0600 for istio-proxy and the resolved drop-in", async () => {
    world = await startWorld("istiod");
    // The admin exposed kube-dns to VMs (the dnsmasq path), so the bundle leaves the agent's DNS proxy off.
    world.plane.context.store.create("services", {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "dns-ilb", namespace: "kube-system" },
      spec: { type: "LoadBalancer", ports: [{ name: "dns", port: 53, protocol: "UDP" }] },
    });
    const made = await world.cli(["bundle", "-o", "i.tgz", "--deb", world.deb, "-n", "default", "-s", "default"]);
    expect(made.code, made.stderr).toBe(0);
    expect(made.stderr).toContain("DNS proxy off: kube-dns load balancer kube-system/dns-ilb found");
    expect(made.stdout).toMatch(/^istio-token\s+0600\s/m);
    expect(made.stdout).not.toMatch(/^key\.pem/m);
    const root = await makeRoot(world.dir, "vm");
    const result = await world.cli(["install", "i.tgz", "--resolver", "resolved", "--set", "ISTIO_SVC_IP=10.0.0.7"], {
      ISTIO_VM_ROOT: root,
    });
    expect(result.code, result.stderr).toBe(0);
    expect(await owners(root, ["var/lib/istio/tokens/istio-token", "etc/certs/root-cert.pem"])).toEqual([
      `var/lib/istio/tokens/istio-token ${PROXY_UID}:${PROXY_UID} 600`,
      `etc/certs/root-cert.pem ${PROXY_UID}:${PROXY_UID} 644`,
    ]);
    const dropin = await readFile(join(root, "etc/systemd/resolved.conf.d/istio-vm.conf"), "utf8");
    expect(dropin).toMatch(/^DNS=127\.0\.0\.1$/m);
    expect(dropin).toMatch(/^Domains=.*~istiod\b.*~istio-system\b/m);
    expect(dropin).toMatch(/^ResolveUnicastSingleLabel=yes$/m);
    expect(await readFile(join(root, "etc/dnsmasq.d/istio-vm-local"), "utf8")).toMatch(/^no-resolv$/m);
    // resolv.conf is resolved's business in this mode.
    expect(await readFile(join(root, "etc/resolv.conf"), "utf8")).toBe(
      "domain example.internal\nnameserver 192.0.2.53\n",
    );
  });
});

describe.skipIf(missing !== undefined)("bundle, install and uninstall with the agent's DNS proxy (istiod)", () => {
  let world: World | undefined;
  afterAll(async () => {
    await world?.plane.close();
    if (world !== undefined) await rm(world.dir, { recursive: true, force: true });
  });
  type Report = { steps: { id: string; action: string; detail: string }[]; changed: boolean };
  const steps = (stdout: string): string[][] => (JSON.parse(stdout) as Report).steps.map((s) => [s.id, s.action]);

  it("maps the control plane's names in one block of /etc/hosts, idempotently, and uninstall removes only it", async () => {
    world = await startWorld("istiod");
    const made = await world.cli(["bundle", "-o", "p.tgz", "--no-deb", "-n", "default", "--json"]);
    expect(made.code, made.stderr).toBe(0);
    // No kube-dns load balancer in this cluster: the bundle turns the DNS proxy on, as `cluster-env` would.
    expect(made.stderr).toContain("DNS proxy on: no kube-dns load balancer (kube-system/dns-ilb)");
    const members = readTar(gunzipSync(await readFile(join(world.dir, "p.tgz"))), "p.tgz");
    const text = (name: string): string =>
      Buffer.from(members.find((m) => m.name === name)?.data ?? []).toString("utf8");
    expect(text("cluster.env")).toMatch(/^ISTIO_META_DNS_CAPTURE='true'$/m);
    // The east-west gateway's address, as kubedns has it, for the one name the VM dials.
    const gateway = /^address=\/istiod\.istio-system\.svc\/(\S+)$/m.exec(text("kubedns"))?.[1];
    expect(gateway).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(text("hosts")).toBe(`${gateway ?? ""} istiod.istio-system.svc\n`);

    const root = await makeRoot(world.dir, "vm");
    const userHosts = "127.0.0.1\tlocalhost\n127.0.1.1\tvm1";
    await writeFile(join(root, "etc/hosts"), userHosts, { mode: 0o644 });
    const env = { ISTIO_VM_ROOT: root };
    const install = ["install", "p.tgz", "--set", "ISTIO_SVC_IP=10.0.0.7", "--json"];

    const dry = await world.cli([...install, "--dry-run"], env);
    expect(dry.code, dry.stderr).toBe(0);
    expect(steps(dry.stdout)).toContainEqual(["hosts", "update"]);
    expect(await readFile(join(root, "etc/hosts"), "utf8")).toBe(userHosts);

    const first = await world.cli(install, env);
    expect(first.code, first.stderr).toBe(0);
    const hosts = await readFile(join(root, "etc/hosts"), "utf8");
    expect(hosts).toBe(
      `${userHosts}\n# BEGIN istio-vm\n` +
        "# the control plane's names for the istio-vm agent: replaced by `istio-vm install`, removed by `istio-vm uninstall`; add your own lines outside this block\n" +
        `${gateway ?? ""} istiod.istio-system.svc\n# END istio-vm\n`,
    );
    // Nothing of dnsmasq or the resolver: the DNS proxy answers mesh names.
    await expect(stat(join(root, "etc/dnsmasq.d/kubedns"))).rejects.toThrow();
    expect(await readFile(join(root, "etc/resolv.conf"), "utf8")).toBe(
      "domain example.internal\nnameserver 192.0.2.53\n",
    );

    const second = await world.cli(install, env);
    expect(second.code, second.stderr).toBe(0);
    expect((JSON.parse(second.stdout) as Report).changed).toBe(false);
    expect(steps(second.stdout)).toContainEqual(["hosts", "unchanged"]);

    // A line the user adds afterwards, outside the block, survives uninstall.
    await writeFile(join(root, "etc/hosts"), `${hosts}10.1.1.1 db.internal\n`);
    const dryUninstall = await world.cli(["uninstall", "--dry-run", "--json"], env);
    expect(dryUninstall.code, dryUninstall.stderr).toBe(0);
    expect(steps(dryUninstall.stdout)).toEqual([
      ["hosts", "edit"],
      ["install-record", "remove"],
    ]);
    const uninstall = await world.cli(["uninstall", "--json"], env);
    expect(uninstall.code, uninstall.stderr).toBe(0);
    expect(await readFile(join(root, "etc/hosts"), "utf8")).toBe(`${userHosts}\n10.1.1.1 db.internal\n`);
  });
});
