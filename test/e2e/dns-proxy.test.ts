/**
 * The agent's DNS proxy on a booted Debian 12 (systemd as PID 1) that has no dnsmasq: the .deb installed, the unit
 * started with ISTIO_META_DNS_CAPTURE=true, the name table from `istio-vm dev`'s istiod (NDS over plain-text ADS), the
 * VM's resolv.conf pointing at a real resolver (dnsmasq in the "cluster" namespace, which knows other addresses for
 * the mesh's names), and applications (uid 65534) resolving through glibc. Then the dev plane is stopped and the
 * agent restarted: mesh names keep resolving from the table persisted on disk.
 *
 * The VM is set up as an operator would: `istio-vm bundle --from` (cluster.env with the control plane's default names,
 * kubedns mapping them to the gateway address) and `istio-vm install` on the VM, which maps those names in the
 * istio-vm block of /etc/hosts — without dnsmasq nothing else on the VM resolves `istiod.istio-system.svc` for the
 * agent (istioctl's VM recipe appends the same line to /etc/hosts by hand). `istio-vm uninstall` removes the block.
 */
import type { ChildProcess } from "node:child_process";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { requirements } from "../support/requirements.js";
import type { DebianMachine } from "./debian-harness.js";
import { HARNESS_TOOLS, bootDebian, runHost } from "./debian-harness.js";
import { REPO, ensureDeb } from "./deb-package.js";

const missing = requirements({ root: true, tools: [...HARNESS_TOOLS, "dpkg-deb", "ip", "dnsmasq"] });

const UNIT = "istio-vm-agent.service";
const CLI = `${REPO}/dist/istio-vm.cjs`;
const MESH_NAME = "istiod.istio-system.svc.cluster.local";
const APP = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  if (!(await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)]))) {
    child.kill("SIGKILL");
    await exited;
  }
}

/** Resolves once the child printed a line matching `ready`; rejects if it exits first. */
function waitFor(child: ChildProcess, ready: RegExp, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = "";
    const seen = (d: Buffer): void => {
      out += d.toString();
      if (ready.test(out)) resolve(out);
    };
    child.stdout?.on("data", seen);
    child.stderr?.on("data", seen);
    child.once("exit", (code) => {
      reject(new Error(`${what} exited ${String(code)}:\n${out}`));
    });
  });
}

describe.skipIf(missing !== undefined)("the DNS proxy on a booted Debian 12 without dnsmasq", () => {
  const id = randomBytes(3).toString("hex");
  const subnet = `10.253.${String((parseInt(id.slice(0, 2), 16) % 250) + 1)}`;
  const clusterIp = `${subnet}.1`;
  const resolverIp = `${subnet}.9`;
  const vmIp = `${subnet}.2`;
  const gatewayIp = `${subnet}.6`;
  const clusterNs = `dnsproxy-cluster-${id}`;
  let vm: DebianMachine | undefined;
  let dev: ChildProcess | undefined;
  let resolver: ChildProcess | undefined;
  let netns = false;
  let bundleDir: string | undefined;
  let hostsBefore = "";

  const machine = (): DebianMachine => {
    if (vm === undefined) throw new Error("the machine did not boot");
    return vm;
  };

  async function diagnostics(): Promise<string> {
    if (vm === undefined) return "";
    const status = await vm.run(["systemctl", "status", "--no-pager", "--lines=0", UNIT]);
    const journal = await vm.journal(UNIT).catch((e: unknown) => String(e));
    return `${status.stdout}\n--- journal of ${UNIT}\n${journal}`;
  }

  /** `getent ahostsv4 NAME` as an application user: the addresses, or "" when it did not resolve. */
  async function resolve(name: string): Promise<string[]> {
    const r = await machine().run([...APP, "getent", "ahostsv4", name]);
    return [...new Set(r.stdout.split("\n").map((l) => l.trim().split(/\s+/)[0] ?? ""))].filter((a) => a !== "");
  }

  async function statusText(): Promise<string> {
    return (await machine().unitProperties(UNIT, ["StatusText"]))["StatusText"] ?? "";
  }

  async function waitStatus(pattern: RegExp): Promise<void> {
    for (let i = 0; i < 120; i++) {
      if (pattern.test(await statusText())) return;
      await sleep(500);
    }
    throw new Error(`STATUS= never matched ${String(pattern)}: ${await statusText()}\n${await diagnostics()}`);
  }

  /** The addresses of MESH_NAME in the name table the agent persisted. */
  async function tableAddresses(): Promise<string[]> {
    const text = await machine().check(["cat", "/var/lib/istio/nds/name-table.json"]);
    const stored = JSON.parse(text) as { table: Record<string, { ips: string[] }> };
    return stored.table[MESH_NAME]?.ips.filter((ip) => !ip.includes(":")) ?? [];
  }

  beforeAll(async () => {
    const deb = ensureDeb();
    vm = await bootDebian({ name: "dnsproxy" });
    const leader = String(vm.leader);
    const host = async (args: string[]): Promise<void> => {
      const r = await runHost("ip", args);
      if (r.code !== 0) throw new Error(`ip ${args.join(" ")}: ${r.stderr}`);
    };
    await host(["netns", "add", clusterNs]);
    netns = true;
    await host(["-n", clusterNs, "link", "set", "lo", "up"]);
    await host(["-n", clusterNs, "link", "add", `dc${id}`, "type", "veth", "peer", "name", `dv${id}`]);
    await host(["-n", clusterNs, "addr", "add", `${clusterIp}/24`, "dev", `dc${id}`]);
    await host(["-n", clusterNs, "addr", "add", `${resolverIp}/24`, "dev", `dc${id}`]);
    await host(["-n", clusterNs, "addr", "add", `${gatewayIp}/24`, "dev", `dc${id}`]);
    await host(["-n", clusterNs, "link", "set", `dc${id}`, "up"]);
    await host(["-n", clusterNs, "link", "set", `dv${id}`, "netns", leader]);
    await vm.check(["sh", "-c", `ip addr add ${vmIp}/24 dev dv${id} && ip link set dv${id} up`]);
    dev = spawn("ip", [
      ...["netns", "exec", clusterNs, process.execPath, CLI, "dev", "--profile", "istiod", "--json"],
      ...["--write-kubeconfig", `/tmp/dnsproxy-${id}.kubeconfig`, "--listen", "0.0.0.0"],
      ...["--lb-ip", gatewayIp, "--lb-delay", "0s", "--service-port", "pilot-grpc=15010"],
    ]);
    await waitFor(dev, /"ready":true/, "istio-vm dev");
    // The VM's own resolver: it knows another address for the mesh name (an answer from the table differs) and a
    // name of its own (only a forward can answer it).
    resolver = spawn(
      "ip",
      [
        ...["netns", "exec", clusterNs, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts"],
        ...[`--listen-address=${resolverIp}`, "--bind-interfaces", "--user=root", "--pid-file=", "--log-queries"],
        ...["--log-facility=-", "--host-record=www.upstream.test,192.0.2.55", `--host-record=${MESH_NAME},10.255.0.1`],
        "--local=/upstream.test/",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    await waitFor(resolver, /started/, "dnsmasq");
    await vm.copyIn(deb, "/root/istio-vm-agent.deb");
    await vm.check(["sh", "-c", "DEBIAN_FRONTEND=noninteractive dpkg -i /root/istio-vm-agent.deb >/dev/null"]);
  }, 600_000);

  afterAll(async () => {
    await vm?.run(["systemctl", "stop", UNIT], { timeoutMs: 60_000 }).catch(() => undefined);
    await vm?.dispose();
    await stopChild(dev);
    await stopChild(resolver);
    if (netns) await runHost("ip", ["netns", "del", clusterNs]);
    if (bundleDir !== undefined) await rm(bundleDir, { recursive: true, force: true });
  });

  it("starts the proxy with no dnsmasq on the machine and gets istiod's name table", async () => {
    const vm = machine();
    expect((await vm.run(["sh", "-c", "command -v dnsmasq || ls /usr/sbin/dnsmasq"])).code).not.toBe(0);
    await vm.check(["sh", "-c", `rm -f /etc/resolv.conf && echo 'nameserver ${resolverIp}' > /etc/resolv.conf`]);
    // What `cluster-env`, `dnsmasq` and `certs` would write: the control plane by its default names
    // (istiod.istio-system.svc:15010 in plain text), kubedns mapping them to the gateway's address.
    bundleDir = await mkdtemp(join(tmpdir(), "istio-vm-dnsproxy-"));
    const files: Record<string, string> = {
      "cluster.env":
        "ISTIO_CONTROL_PLANE='istiod'\nISTIO_META_DNS_CAPTURE='true'\nCONTROL_PLANE_AUTH_POLICY='NONE'\nPOD_NAMESPACE='default'\n",
      kubedns: ["istiod", "istiod.istio-system", "istiod.istio-system.svc"]
        .map((n) => `address=/${n}/${gatewayIp}\n`)
        .join(""),
      // Not used by the plain-text components below (no CA call, no Envoy); a bundle for istiod carries both.
      "root-cert.pem": "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
      "istio-token": "e2e-token\n",
    };
    for (const [name, content] of Object.entries(files)) await writeFile(join(bundleDir, name), content);
    const bundle = await runHost(process.execPath, [
      CLI,
      "bundle",
      "--from",
      bundleDir,
      "--no-deb",
      "-o",
      join(bundleDir, "vm.tgz"),
    ]);
    expect(bundle.code, bundle.stderr).toBe(0);
    expect(bundle.stdout).toMatch(/^hosts\s+0644\s/m);
    await vm.copyIn(join(bundleDir, "vm.tgz"), "/root/vm.tgz");
    hostsBefore = await vm.check(["cat", "/etc/hosts"]);
    const install = await vm.run(
      [
        ...["istio-vm", "install", "/root/vm.tgz", "--set", `ISTIO_SVC_IP=${vmIp}`],
        // No Envoy can be installed here; certificates need a CA the plain-text setup does not use.
        ...["--set", "ISTIO_AGENT_COMPONENTS=dns,interception"],
      ],
      { timeoutMs: 120_000 },
    );
    expect(install.code, `${install.stdout}\n${install.stderr}\n${await diagnostics()}`).toBe(0);
    const hosts = await vm.check(["cat", "/etc/hosts"]);
    expect(hosts.startsWith(hostsBefore)).toBe(true);
    expect(hosts).toContain(`# BEGIN istio-vm\n`);
    expect(hosts).toContain(`\n${gatewayIp} istiod.istio-system.svc\n# END istio-vm\n`);
    // The agent's own user (never captured) resolves istiod's name through /etc/hosts.
    const agentView = await machine().run([
      ...["setpriv", "--reuid=istio-proxy", "--regid=istio-proxy", "--clear-groups"],
      ...["getent", "ahostsv4", "istiod.istio-system.svc"],
    ]);
    expect(agentView.stdout.split(/\s+/)[0]).toBe(gatewayIp);
    await waitStatus(/names \(from istiod/);
    expect(await tableAddresses()).not.toEqual([]);
  }, 240_000);

  it("answers a mesh name from the table for an application, through the capture rules", async () => {
    const table = await tableAddresses();
    expect(await resolve(MESH_NAME)).toEqual(table);
    // Root is an application too; istio-proxy, the agent's own user, is not captured and gets the resolver's answer.
    const root = await machine().run(["getent", "ahostsv4", MESH_NAME]);
    expect(root.stdout.split(/\s+/)[0]).toBe(table[0]);
    const proxyUser = await machine().run([
      ...["setpriv", "--reuid=istio-proxy", "--regid=istio-proxy", "--clear-groups"],
      ...["getent", "ahostsv4", MESH_NAME],
    ]);
    expect(proxyUser.stdout, await diagnostics()).toContain("10.255.0.1");
  });

  it("forwards a name outside the mesh to resolv.conf's server", async () => {
    expect(await resolve("www.upstream.test")).toEqual(["192.0.2.55"]);
  });

  it("`istio-vm check --only dns` passes: table answer, forward, table age, and the capture", async () => {
    const result = await machine().run(["istio-vm", "check", "--only", "dns", "--verbose"]);
    expect(result.code, `${result.stdout}\n${await diagnostics()}`).toBe(0);
    expect(result.stdout).toContain(`at ${resolverIp}:53, as applications ask`);
  });

  it("keeps answering mesh names from the persisted table with the control plane gone, across a restart", async () => {
    const table = await tableAddresses();
    await stopChild(dev);
    await machine().check(["systemctl", "restart", UNIT], { timeoutMs: 60_000 });
    await waitStatus(/names \(from disk/);
    // The DNS proxy starts before interception (it must listen before capture sends it queries): until capture is
    // back, an application's query goes straight to resolv.conf's server (CI once resolved in that gap).
    const captured = await machine().run(["istio-vm", "check", "--only", "interception", "--wait=60s"]);
    expect(captured.code, `${captured.stdout}\n${await diagnostics()}`).toBe(0);
    expect(await resolve(MESH_NAME)).toEqual(table);
    expect(await resolve("www.upstream.test")).toEqual(["192.0.2.55"]);
  }, 120_000);

  it("`istio-vm uninstall` removes the istio-vm block of /etc/hosts and nothing else", async () => {
    await machine().check(["systemctl", "stop", UNIT], { timeoutMs: 60_000 });
    const result = await machine().run(["istio-vm", "uninstall"]);
    expect(result.code, `${result.stdout}\n${result.stderr}`).toBe(0);
    expect(await machine().check(["cat", "/etc/hosts"])).toBe(hostsBefore);
  }, 120_000);
});
