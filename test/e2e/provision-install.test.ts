/**
 * `istio-vm install` on a booted Debian 12 (test/e2e/debian-harness.ts) with Debian's own resolver stack for a
 * DHCP machine (ifupdown's isc-dhcp-client writing resolv.conf, dnsmasq): first boot through the cloud-init runcmd
 * script that `setup --cloud-init` generates (bootstrap dpkg -i from the bundle, then install), the agent active
 * and enabled, a second install changing nothing, a lease renewal by the real dhclient-script keeping 127.0.0.1
 * (and, without our hook, losing it: the original's bug), mesh names answered through the system resolver, a
 * tampered bundle refused with nothing changed, and a restart of the container bringing the agent back by itself.
 *
 * The container has no CA and no Envoy, so the bundle sets ISTIO_AGENT_COMPONENTS=interception (the agent applies
 * its capture in the container's own network namespace and reports READY).
 */
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI } from "../support/cli.js";
import { requirements } from "../support/requirements.js";
import type { DebianMachine } from "./debian-harness.js";
import { BASE_PACKAGES, HARNESS_TOOLS, bootDebian, runHost } from "./debian-harness.js";
import { ensureDeb } from "./deb-package.js";

const missing = requirements({ root: true, tools: [...HARNESS_TOOLS, "dpkg-deb", "python3"] });
const PACKAGES = [...BASE_PACKAGES, "dnsmasq", "isc-dhcp-client"];
const UNIT = "istio-vm-agent.service";

const LEGACY_KUBEDNS = [
  "server=/svc.cluster.local/10.128.0.6",
  "address=/istio-mixer/10.128.0.7",
  "address=/istio-pilot/10.128.0.8",
  "address=/istio-ca/10.128.0.9",
  "address=/istio-mixer.istio-system/10.128.0.7",
  "address=/istio-pilot.istio-system/10.128.0.8",
  "address=/istio-ca.istio-system/10.128.0.9",
  "",
].join("\n");

async function cli(args: readonly string[], cwd: string): Promise<string> {
  const result = await runHost(process.execPath, [CLI, ...args], { timeoutMs: 120_000 });
  if (result.code !== 0)
    throw new Error(`istio-vm ${args.join(" ")} (in ${cwd}) exited ${String(result.code)}:\n${result.stderr}`);
  return result.stdout;
}

/** The container's init under an nspawn process: the descendant whose innermost PID is 1. */
async function findLeader(nspawnPid: number): Promise<number | undefined> {
  const parents = new Map<number, number>();
  const inits: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const status = await readFile(`/proc/${entry}/status`, "utf8").catch(() => "");
    const ppid = /^PPid:\s+(\d+)$/m.exec(status)?.[1];
    const nspid = /^NSpid:\s+(.+)$/m.exec(status)?.[1]?.trim().split(/\s+/);
    if (ppid !== undefined) parents.set(Number(entry), Number(ppid));
    if (nspid !== undefined && nspid.length > 1 && nspid[nspid.length - 1] === "1") inits.push(Number(entry));
  }
  return inits.find((pid) => {
    for (let p = parents.get(pid); p !== undefined && p > 1; p = parents.get(p)) if (p === nspawnPid) return true;
    return false;
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Boots the same root directory again (the "restart of the container"): the harness boots fresh images only, so
 * this is a second nspawn of the kept root with the harness's options, driven with nsenter like the harness does.
 */
async function bootAgain(
  root: string,
): Promise<{ run: (cmd: string[]) => Promise<string>; stop: () => Promise<void> }> {
  const nspawn = spawn(
    "systemd-nspawn",
    [
      "--boot",
      "--register=no",
      "--keep-unit",
      "--private-network",
      "--console=pipe",
      `--machine=ivm-reboot-${process.pid}`,
      `--directory=${root}`,
    ],
    { stdio: ["ignore", "ignore", "ignore"] },
  );
  const exited = new Promise<void>((resolve) =>
    nspawn.once("exit", () => {
      resolve();
    }),
  );
  const stop = async (): Promise<void> => {
    if (nspawn.exitCode === null && nspawn.signalCode === null && nspawn.pid !== undefined) {
      const leader = await findLeader(nspawn.pid);
      // SIGRTMIN+4 (38 on Linux) asks systemd for a clean poweroff; Node has no name for it.
      if (leader !== undefined) process.kill(leader, 38);
      const done = await Promise.race([exited.then(() => true), sleep(20_000).then(() => false)]);
      if (!done) {
        nspawn.kill("SIGKILL");
        await exited;
      }
    }
  };
  try {
    let leader: number | undefined;
    for (let i = 0; i < 600 && leader === undefined; i++) {
      if (nspawn.exitCode !== null) throw new Error("systemd-nspawn exited during the second boot");
      await sleep(100);
      if (nspawn.pid !== undefined) leader = await findLeader(nspawn.pid);
    }
    if (leader === undefined) throw new Error("no init in the second boot");
    const pid = leader;
    const run = async (cmd: string[]): Promise<string> =>
      (
        await runHost(
          "nsenter",
          [
            `--target=${pid}`,
            "--all",
            "--",
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "SYSTEMD_PAGER=",
            ...cmd,
          ],
          {
            timeoutMs: 30_000,
          },
        )
      ).stdout;
    let state = "";
    for (let i = 0; i < 600 && state !== "running" && state !== "degraded"; i++) {
      await sleep(200);
      state = (await run(["systemctl", "is-system-running"])).trim();
    }
    return { run, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

describe.skipIf(missing !== undefined)("install on a booted Debian 12 (ifupdown + dhclient + dnsmasq)", () => {
  let vm: DebianMachine | undefined;
  let work = "";
  let userData: { content: string; script: string } = { content: "", script: "" };
  const m = (): DebianMachine => {
    if (vm === undefined) throw new Error("the machine did not boot");
    return vm;
  };

  beforeAll(async () => {
    const deb = ensureDeb();
    work = await mkdtemp(join(tmpdir(), "istio-vm-e2e-provision-"));
    const from = join(work, "from");
    await mkdir(from);
    await writeFile(
      join(from, "cluster.env"),
      "ISTIO_CONTROL_PLANE=legacy\nISTIO_SYSTEM_NAMESPACE=istio-system\nISTIO_SERVICE_CIDR=10.96.0.0/12\nCONTROL_PLANE_AUTH_POLICY=MUTUAL_TLS\n",
    );
    await writeFile(join(from, "kubedns"), LEGACY_KUBEDNS);
    // The certificate component does not run in the container (no CA); install places these files all the same.
    for (const f of ["root-cert.pem", "cert-chain.pem", "key.pem"]) await writeFile(join(from, f), `stand-in ${f}\n`);
    const bundle = join(work, "vm.tgz");
    await cli(
      [
        "bundle",
        "--from",
        from,
        "--deb",
        deb,
        "--svc-ip",
        "10.0.0.5",
        "--inbound-ports",
        "8080",
        "--set",
        "ISTIO_AGENT_COMPONENTS=interception",
        "-o",
        bundle,
      ],
      work,
    );
    const yamlPath = join(work, "user-data.yaml");
    await cli(["setup", "--cloud-init", "--bundle", bundle, "-o", yamlPath], work);
    const parsed = await runHost(
      "python3",
      [
        "-c",
        "import json,sys,yaml; d=yaml.load(open(sys.argv[1]), Loader=yaml.CSafeLoader); print(json.dumps({'content': d['write_files'][0]['content'], 'script': d['runcmd'][0][2]}))",
        yamlPath,
      ],
      { timeoutMs: 600_000 },
    );
    userData = JSON.parse(parsed.stdout) as typeof userData;
    vm = await bootDebian({ name: "provision", packages: PACKAGES });
  }, 20 * 60_000);

  afterAll(async () => {
    await vm?.dispose();
    if (work !== "") await rm(work, { recursive: true, force: true });
  });

  it("first boot via the cloud-init runcmd: bootstraps the .deb from the bundle, installs, agent active and enabled", async () => {
    // What cloud-init's write_files does: the bundle, 0600, root.
    const target = join(m().root, "var/lib/istio-vm-setup/bundle.tgz");
    await mkdir(dirname(target), { recursive: true });
    await writeFile(target, Buffer.from(userData.content, "base64"), { mode: 0o600 });
    expect((await m().check(["sh", "-c", "command -v istio-vm || echo none"])).trim()).toBe("none");
    const result = await m().run(["sh", "-c", userData.script], { timeoutMs: 300_000 });
    expect(
      result.code,
      `${result.stdout}\n${result.stderr}\n${await m()
        .journal(UNIT)
        .catch(() => "")}`,
    ).toBe(0);
    // The runcmd's bootstrap installed the package from the bundle; install then finds that version in place,
    // and the package's postinst has enabled the unit.
    expect(result.stdout).toContain("Setting up istio-vm-agent (");
    expect(result.stdout).toMatch(/^package\s+unchanged\s+istio-vm-agent \S+ is installed$/m);
    expect(result.stdout).toMatch(/^enable\s+unchanged\s/m);
    expect(result.stdout).toMatch(/^istio-vm-agent\.service: active\/running — ready: /m);
    expect(result.stdout).toMatch(/^interception\s+ok\s/m);
    expect(result.stdout).toMatch(/^ready\s+wait\s/m);
    expect(result.stdout).toMatch(/resolver dhclient/);
    // The runcmd removed the bundle with the credentials in it.
    expect((await m().run(["test", "-e", "/var/lib/istio-vm-setup/bundle.tgz"])).code).not.toBe(0);

    const props = await m().unitProperties(UNIT, ["ActiveState", "SubState", "UnitFileState"]);
    expect(props).toEqual({ ActiveState: "active", SubState: "running", UnitFileState: "enabled" });
    const stat = await m().check([
      "stat",
      "-c",
      "%n %U:%G %a",
      "/var/lib/istio/envoy/cluster.env",
      "/var/lib/istio/envoy/sidecar.env",
      "/etc/certs/root-cert.pem",
      "/etc/certs/cert-chain.pem",
      "/etc/certs/key.pem",
      "/etc/dnsmasq.d/kubedns",
      "/etc/dnsmasq.d/istio-vm-local",
      "/etc/dhcp/dhclient-enter-hooks.d/istio-vm",
    ]);
    expect(stat.trim().split("\n")).toEqual([
      "/var/lib/istio/envoy/cluster.env root:root 644",
      "/var/lib/istio/envoy/sidecar.env root:root 644",
      "/etc/certs/root-cert.pem istio-proxy:istio-proxy 644",
      "/etc/certs/cert-chain.pem istio-proxy:istio-proxy 644",
      "/etc/certs/key.pem istio-proxy:istio-proxy 600",
      "/etc/dnsmasq.d/kubedns root:root 644",
      "/etc/dnsmasq.d/istio-vm-local root:root 644",
      "/etc/dhcp/dhclient-enter-hooks.d/istio-vm root:root 644",
    ]);
    // sidecar.env is the package's documented conffile with our settings merged in.
    const sidecar = await m().check(["cat", "/var/lib/istio/envoy/sidecar.env"]);
    expect(sidecar).toMatch(/^ISTIO_SVC_IP=10\.0\.0\.5$/m);
    expect(sidecar).toMatch(/^ISTIO_AGENT_COMPONENTS=interception$/m);
    expect(sidecar).toMatch(/^#/m);
  });

  it("resolves the mesh's names through the system resolver (resolv.conf → dnsmasq → kubedns)", async () => {
    expect((await m().check(["systemctl", "is-active", "dnsmasq"])).trim()).toBe("active");
    expect((await m().check(["sh", "-c", "grep -m1 '^nameserver' /etc/resolv.conf"])).trim()).toBe(
      "nameserver 127.0.0.1",
    );
    expect((await m().check(["getent", "hosts", "istio-pilot.istio-system"])).trim()).toMatch(/^10\.128\.0\.8\s/);
    expect((await m().check(["getent", "hosts", "istio-ca"])).trim()).toMatch(/^10\.128\.0\.9\s/);
  });

  it("a second install changes nothing", async () => {
    await m().copyIn(join(work, "vm.tgz"), "/root/vm.tgz");
    const result = await m().run(["istio-vm", "install", "/root/vm.tgz", "--json"], { timeoutMs: 120_000 });
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout) as { changed: boolean; steps: { id: string; action: string }[] };
    expect(report.steps.filter((s) => s.action !== "unchanged")).toEqual([]);
    expect(report.changed).toBe(false);
  });

  it("keeps 127.0.0.1 first when dhclient-script renews the lease; without the hook the renewal drops it (#1857)", async () => {
    const renew = [
      "env",
      "reason=RENEW",
      "interface=lo",
      "new_ip_address=127.0.0.1",
      "old_ip_address=127.0.0.1",
      "new_subnet_mask=255.0.0.0",
      "new_domain_name=example.internal",
      "new_domain_name_servers=192.0.2.53 192.0.2.54",
      "/sbin/dhclient-script",
    ];
    const renewed = await m().run(renew);
    expect(renewed.code, renewed.stderr).toBe(0);
    const nameservers = (await m().check(["sh", "-c", "grep '^nameserver' /etc/resolv.conf"])).trim().split("\n");
    expect(nameservers).toEqual(["nameserver 127.0.0.1", "nameserver 192.0.2.53", "nameserver 192.0.2.54"]);
    expect((await m().check(["getent", "hosts", "istio-pilot"])).trim()).toMatch(/^10\.128\.0\.8\s/);

    // The control: the same renewal without the hook is what broke the original recipe.
    await m().check(["mv", "/etc/dhcp/dhclient-enter-hooks.d/istio-vm", "/root/hook.saved"]);
    try {
      await m().check(renew);
      const without = (await m().check(["sh", "-c", "grep '^nameserver' /etc/resolv.conf"])).trim().split("\n");
      expect(without).toEqual(["nameserver 192.0.2.53", "nameserver 192.0.2.54"]);
    } finally {
      await m().check(["mv", "/root/hook.saved", "/etc/dhcp/dhclient-enter-hooks.d/istio-vm"]);
    }
    // install repairs it (and reports exactly what it changed).
    const repaired = await m().run(["istio-vm", "install", "/root/vm.tgz", "--no-checks"], { timeoutMs: 120_000 });
    expect(repaired.code, repaired.stderr).toBe(0);
    expect(repaired.stdout).toMatch(/^resolv\.conf\s+update\s/m);
    expect(repaired.stdout).toMatch(/^cluster\.env\s+unchanged\s/m);
  });

  it("refuses a tampered bundle inside the VM, names the member, and the agent keeps running", async () => {
    const tampered = await m().run([
      "sh",
      "-c",
      "set -e; d=$(mktemp -d); cd $d; tar -xzf /root/vm.tgz; sed -i s/10.128.0.8/10.66.6.6/ kubedns; tar -czf /root/bad.tgz *; rm -rf $d",
    ]);
    expect(tampered.code, tampered.stderr).toBe(0);
    const before = await m().check(["sha256sum", "/etc/dnsmasq.d/kubedns"]);
    const result = await m().run(["istio-vm", "install", "/root/bad.tgz"]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("member kubedns does not match SHA256SUMS");
    expect(await m().check(["sha256sum", "/etc/dnsmasq.d/kubedns"])).toBe(before);
    expect((await m().check(["systemctl", "is-active", UNIT])).trim()).toBe("active");
  });

  it("comes back by itself after the container restarts (enabled unit)", async () => {
    const machine = m();
    const leader = machine.leader;
    await machine.run(["systemctl", "--no-block", "poweroff"]);
    for (let i = 0; i < 300; i++) {
      const alive = await readFile(`/proc/${leader}/status`, "utf8").then(
        () => true,
        () => false,
      );
      if (!alive) break;
      await sleep(100);
    }
    await sleep(500);
    // Keep the root: move it out before the harness removes its directory.
    const kept = join(work, "root");
    await rename(machine.root, kept);
    await machine.dispose();
    vm = undefined;
    const again = await bootAgain(kept);
    try {
      let state = "";
      for (let i = 0; i < 100 && state !== "active"; i++) {
        state = (await again.run(["systemctl", "is-active", UNIT])).trim();
        if (state !== "active") await sleep(200);
      }
      expect(state).toBe("active");
      const show = await again.run(["systemctl", "show", UNIT, "--property=SubState", "--property=StatusText"]);
      expect(show).toMatch(/^SubState=running$/m);
      expect(show).toMatch(/^StatusText=.+$/m);
      expect((await again.run(["systemctl", "is-active", "dnsmasq"])).trim()).toBe("active");
      expect((await again.run(["getent", "hosts", "istio-pilot"])).trim()).toMatch(/^10\.128\.0\.8\s/);
    } finally {
      await again.stop();
    }
  });
});
