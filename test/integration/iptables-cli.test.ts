/** `istio-vm iptables` as a user meets it: help, plan output, validation errors. Nothing here touches iptables. */
import { mkdtempSync, rmSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "vitest";
import { runCli } from "../support/cli.js";

const dir = mkdtempSync(join(tmpdir(), "iptv-cli-"));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** Configuration from files in a temporary root (ISTIO_VM_ROOT relocates /etc/passwd and the env files too). */
function env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: process.env["PATH"] ?? "/usr/bin:/bin", ISTIO_VM_ROOT: dir, ...extra };
}

const etc = join(dir, "etc");
const envoyDir = join(dir, "var/lib/istio/envoy");

async function setup(sidecar: string): Promise<void> {
  await mkdir(etc, { recursive: true });
  await mkdir(envoyDir, { recursive: true });
  await writeFile(
    join(etc, "passwd"),
    "root:x:0:0::/root:/bin/sh\nistio-proxy:x:999:995::/var/lib/istio:/usr/sbin/nologin\n",
  );
  await writeFile(join(envoyDir, "cluster.env"), "ISTIO_SERVICE_CIDR=10.96.0.0/12\n");
  await writeFile(join(envoyDir, "sidecar.env"), sidecar);
}

describe("istio-vm iptables", () => {
  test("--help documents every subcommand, examples and the semantics choices", async () => {
    const r = await runCli(["iptables", "--help"], { env: env() });
    expect(r.code).toBe(0);
    for (const text of [
      "iptables plan",
      "iptables apply",
      "iptables clean",
      "iptables show",
      "EMPTY CAPTURES NO OUTBOUND TRAFFIC",
      "SSH (port 22) is always returned",
      "uid AND gid",
      "never touched",
      "apply --dry-run",
    ]) {
      // Compared without whitespace: the help is wrapped to the terminal's width.
      expect(r.stdout.replace(/\s+/g, "")).toContain(text.replace(/\s+/g, ""));
    }
  });

  test("without a subcommand it is a usage error (exit 2)", async () => {
    const r = await runCli(["iptables"], { env: env() });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("plan, apply, clean or show");
  });

  test("plan reads sidecar.env and cluster.env and the proxy user from the relocated /etc/passwd", async () => {
    await setup("ISTIO_INBOUND_PORTS=8080\n");
    const r = await runCli(["iptables", "plan"], { env: env() });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT");
    expect(r.stdout).toContain("-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT");
    expect(r.stdout).toContain("-A ISTIO_OUTPUT -m owner --uid-owner 999 -j RETURN");
    expect(r.stdout).toContain("-A ISTIO_OUTPUT -m owner --gid-owner 995 -j RETURN");
    expect(r.stdout).toContain("# IPv6: ip6tables-restore --noflush input\n# (nothing to capture)");
  });

  test("plan --json carries the rules per family and the warnings", async () => {
    await setup("ISTIO_INBOUND_PORTS=22,8080\n");
    const r = await runCli(["iptables", "plan", "--json"], { env: env() });
    const plan = JSON.parse(r.stdout) as {
      profile: string;
      families: { family: number; rules: string[] }[];
      warnings: string[];
    };
    expect(plan.profile).toBe("istiod");
    expect(plan.families[0]?.rules[0]).toBe("-A PREROUTING -p tcp -m comment --comment istio-vm -j ISTIO_INBOUND");
    expect(plan.warnings.join("\n")).toContain("SSH is never captured");
  });

  test.each([
    ["0", "port 0 is out of range"],
    ["65536", "port 65536 is out of range"],
    ["http", "'http' is not a port number"],
  ])("ISTIO_INBOUND_PORTS=%s: exit 2 and the problem, with where it came from", async (ports, message) => {
    await setup(`ISTIO_INBOUND_PORTS=${ports}\n`);
    const r = await runCli(["iptables", "plan"], { env: env() });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(message);
    expect(r.stderr).toContain("sidecar.env:1");
  });

  test("bad CIDRs are all reported at once", async () => {
    await setup("ISTIO_SERVICE_EXCLUDE_CIDR=10.0.0.0/33\n");
    const r = await runCli(["iptables", "apply", "--dry-run"], {
      env: env({ ISTIO_SERVICE_CIDR: "10.96.0.1/12,not-a-cidr" }),
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("'10.96.0.1/12' has host bits set");
    expect(r.stderr).toContain("'not-a-cidr' is not a CIDR");
    expect(r.stderr).toContain("'10.0.0.0/33' has an invalid prefix length");
  });

  test("a missing proxy user names the user and the fix; ENVOY_UID works without it", async () => {
    await setup("ENVOY_USER=envoy\nISTIO_INBOUND_PORTS=8080\n");
    const r = await runCli(["iptables", "plan"], { env: env() });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`the proxy user 'envoy' (ENVOY_USER) does not exist in ${join(dir, "etc/passwd")}`);
    expect(r.stderr).toContain("useradd --system");
    const explicit = await runCli(["iptables", "plan"], { env: env({ ENVOY_UID: "1337" }) });
    expect(explicit.code).toBe(0);
    expect(explicit.stdout).toContain("--gid-owner 1337");
  });

  test("--json errors are machine-readable", async () => {
    await setup("ENVOY_USER=envoy\n");
    const r = await runCli(["iptables", "plan", "--json"], { env: env() });
    expect(r.code).toBe(2);
    expect(JSON.parse(r.stdout)).toMatchObject({ error: { code: "PROXY_USER_MISSING", subject: "envoy" } });
  });
});
