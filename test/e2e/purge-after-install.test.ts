/**
 * Removing the package after `istio-vm install` gives the VM its resolver back, on a booted Debian 12 (ifupdown +
 * dhclient + dnsmasq): every file of the resolver — /etc/resolv.conf, /etc/dhcp/dhclient-enter-hooks.d/*,
 * /etc/dnsmasq.d/*, /etc/systemd/resolved.conf.d/* — is byte-identical (same set of files, same modes and owners)
 * after `dpkg -r` and after `dpkg --purge` as before install, a lease renewal no longer puts 127.0.0.1 first, and
 * dnsmasq runs without the mesh's names. The VM starts with a kubedns of its own (placed by hand, as the original
 * recipe did) that install replaces and removal must put back, and sees a lease renewal through install's hook in
 * between, as a running VM does.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI } from "../support/cli.js";
import { requirements } from "../support/requirements.js";
import type { DebianMachine } from "./debian-harness.js";
import { HARNESS_TOOLS, bootDebian, runHost } from "./debian-harness.js";
import { ensureDeb } from "./deb-package.js";
import { RECIPE_PACKAGES } from "./recipe.js";

const missing = requirements({ root: true, tools: [...HARNESS_TOOLS, "dpkg-deb"] });
const UNIT = "istio-vm-agent.service";

const KUBEDNS = [
  "server=/svc.cluster.local/10.128.0.6",
  "address=/istio-pilot/10.128.0.8",
  "address=/istio-pilot.istio-system/10.128.0.8",
  "address=/istio-ca/10.128.0.9",
  "address=/istio-ca.istio-system/10.128.0.9",
  "",
].join("\n");
/** What an admin following the original recipe had put there before. */
const OLD_KUBEDNS = "# placed by hand (the original recipe)\nserver=/svc.cluster.local/10.0.0.10\n";

/** Every resolver file: path, type, mode, owner, and for regular files a sha256 of the bytes. */
const RESOLVER_FILES = [
  "find /etc/resolv.conf /etc/dhcp/dhclient-enter-hooks.d /etc/dnsmasq.d /etc/systemd/resolved.conf.d",
  "/var/lib/istio-vm-agent /var/cache/istio-vm-agent 2>/dev/null | LC_ALL=C sort | while read -r f; do",
  'if [ -f "$f" ] && [ ! -L "$f" ]; then echo "$f $(stat -c "%F %a %U:%G" "$f") $(sha256sum < "$f" | cut -c1-64)";',
  'else echo "$f $(stat -c "%F %a %U:%G" "$f")"; fi; done',
].join(" ");

/** What dhclient-script does on a lease renewal (with the enter hooks that are in place). */
const RENEW = [
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

async function cli(args: readonly string[]): Promise<string> {
  const result = await runHost(process.execPath, [CLI, ...args], { timeoutMs: 120_000 });
  if (result.code !== 0) throw new Error(`istio-vm ${args.join(" ")} exited ${String(result.code)}:\n${result.stderr}`);
  return result.stdout;
}

describe.skipIf(missing !== undefined)("dpkg -r / --purge after istio-vm install (Debian 12, dhclient)", () => {
  let vm: DebianMachine | undefined;
  let work = "";
  let before = "";
  let resolvBefore = "";
  const m = (): DebianMachine => {
    if (vm === undefined) throw new Error("the machine did not boot");
    return vm;
  };
  const snapshot = async (): Promise<string> => m().check(["sh", "-c", RESOLVER_FILES]);
  const nameservers = async (): Promise<string[]> =>
    (await m().check(["sh", "-c", "grep '^nameserver' /etc/resolv.conf || true"])).trim().split("\n");

  beforeAll(async () => {
    const deb = ensureDeb();
    work = await mkdtemp(join(tmpdir(), "istio-vm-e2e-purge-"));
    const from = join(work, "from");
    await runHost("mkdir", [from]);
    await writeFile(
      join(from, "cluster.env"),
      "ISTIO_CONTROL_PLANE=legacy\nISTIO_SYSTEM_NAMESPACE=istio-system\nISTIO_SERVICE_CIDR=10.96.0.0/12\n",
    );
    await writeFile(join(from, "kubedns"), KUBEDNS);
    // No CA here: the certificate component does not run; install places these files all the same.
    for (const f of ["root-cert.pem", "cert-chain.pem", "key.pem"]) await writeFile(join(from, f), `stand-in ${f}\n`);
    await cli([
      ...["bundle", "--from", from, "--deb", deb, "--svc-ip", "10.0.0.5", "--inbound-ports", "8080"],
      ...["--set", "ISTIO_AGENT_COMPONENTS=interception", "-o", join(work, "vm.tgz")],
    ]);
    vm = await bootDebian({ name: "purge", packages: RECIPE_PACKAGES });
    // The VM as it runs before install: resolv.conf written by dhclient-script from a lease, dnsmasq running with a
    // kubedns of the admin's.
    const lease = await m().run(RENEW);
    expect(lease.code, lease.stderr).toBe(0);
    await m().check(["sh", "-c", "cat > /etc/dnsmasq.d/kubedns && systemctl restart dnsmasq"], { input: OLD_KUBEDNS });
    await m().copyIn(join(work, "vm.tgz"), "/root/vm.tgz");
  }, 20 * 60_000);

  afterAll(async () => {
    await vm?.dispose();
    if (work !== "") await rm(work, { recursive: true, force: true });
  });

  it("install rewires the resolver: hook, dnsmasq on loopback, 127.0.0.1 first, kubedns replaced", async () => {
    before = await snapshot();
    resolvBefore = await m().check(["cat", "/etc/resolv.conf"]);
    expect(before).toMatch(/^\/etc\/dnsmasq\.d\/kubedns regular file 644 root:root /m);
    expect(await nameservers()).toEqual(["nameserver 192.0.2.53", "nameserver 192.0.2.54"]);
    expect((await m().check(["systemctl", "is-active", "dnsmasq"])).trim()).toBe("active");

    const bootstrap = await m().run([
      "sh",
      "-c",
      "mkdir -p /root/b && tar -xzf /root/vm.tgz -C /root/b && DEBIAN_FRONTEND=noninteractive dpkg -i /root/b/*.deb && rm -r /root/b",
    ]);
    expect(bootstrap.code, bootstrap.stdout + bootstrap.stderr).toBe(0);
    const install = await m().run(["istio-vm", "install", "/root/vm.tgz", "--no-checks"], { timeoutMs: 300_000 });
    expect(install.code, install.stdout + install.stderr).toBe(0);
    expect(install.stdout).toMatch(/^install-record\s+create\s/m);
    expect((await m().check(["systemctl", "is-active", UNIT])).trim()).toBe("active");
    expect(await nameservers()).toEqual(["nameserver 127.0.0.1", "nameserver 192.0.2.53", "nameserver 192.0.2.54"]);
    expect(await m().check(["cat", "/etc/dnsmasq.d/kubedns"])).toBe(KUBEDNS);
    expect((await m().check(["getent", "hosts", "istio-pilot"])).trim()).toMatch(/^10\.128\.0\.8\s/);
    const record = await m().check([
      "stat",
      "-c",
      "%a %U:%G",
      "/var/lib/istio-vm-agent",
      "/var/lib/istio-vm-agent/install-record.json",
    ]);
    expect(record.trim().split("\n")).toEqual(["700 root:root", "600 root:root"]);
    expect(await snapshot()).not.toBe(before);

    // A lease renewal while installed: dhclient-script rewrites resolv.conf, the hook keeps 127.0.0.1 first.
    const renewed = await m().run(RENEW);
    expect(renewed.code, renewed.stderr).toBe(0);
    expect((await nameservers())[0]).toBe("nameserver 127.0.0.1");
  });

  it("dpkg -r: the agent stops and every resolver file is as before install", async () => {
    const remove = await m().run(["dpkg", "-r", "istio-vm-agent"], { timeoutMs: 300_000 });
    expect(remove.code, remove.stdout + remove.stderr).toBe(0);
    expect(remove.stderr).not.toMatch(/could not restore/);
    expect(remove.stdout).toMatch(/^istio-vm\s+remove\s/m);
    const after = await snapshot();
    expect(after).toBe(before);
    expect(await m().check(["cat", "/etc/resolv.conf"])).toBe(resolvBefore);
    expect(await m().check(["cat", "/etc/dnsmasq.d/kubedns"])).toBe(OLD_KUBEDNS);
    // dnsmasq runs again (with the admin's kubedns); the next lease leaves 127.0.0.1 out (no hook any more).
    expect((await m().check(["systemctl", "is-active", "dnsmasq"])).trim()).toBe("active");
    const renewed = await m().run(RENEW);
    expect(renewed.code, renewed.stderr).toBe(0);
    expect(await nameservers()).toEqual(["nameserver 192.0.2.53", "nameserver 192.0.2.54"]);
    expect(await m().check(["cat", "/etc/resolv.conf"])).toBe(resolvBefore);
  });

  it("dpkg --purge: still as before install, and nothing of install's record is left", async () => {
    const purge = await m().run(["dpkg", "--purge", "istio-vm-agent"], { timeoutMs: 300_000 });
    expect(purge.code, purge.stdout + purge.stderr).toBe(0);
    expect(purge.stderr).not.toMatch(/kept \/var\/lib\/istio-vm-agent/);
    expect(await snapshot()).toBe(before);
    expect((await m().run(["test", "-e", "/var/lib/istio-vm-agent"])).code).not.toBe(0);
    expect((await m().run(["getent", "passwd", "istio-proxy"])).code).toBe(2);
  });
});
