/**
 * Configuration mistakes people and editors make, given to the built CLI: every command that loads the configuration
 * answers with a configuration error (exit 2) naming the variable, where its value came from and what is wrong, and
 * never a stack trace. Also what the config table shows for values a terminal would act on or choke on.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { runCli } from "../support/cli.js";
import { freePort } from "../support/net.js";

const roots: string[] = [];
afterAll(() => {
  for (const root of roots) rmSync(root, { recursive: true, force: true });
});

interface Vm {
  readonly root: string;
  readonly cluster: string;
  readonly sidecar: string;
  readonly env: NodeJS.ProcessEnv;
}

/** A VM root with a complete, valid configuration, plus `sidecar` appended to sidecar.env. */
async function vm(sidecar: string | Buffer, env: Record<string, string> = {}): Promise<Vm> {
  const root = mkdtempSync(join(tmpdir(), "istio-vm-config-"));
  roots.push(root);
  const dir = join(root, "var/lib/istio/envoy");
  mkdirSync(dir, { recursive: true });
  mkdirSync(join(root, "etc"), { recursive: true });
  writeFileSync(join(root, "etc/passwd"), "istio-proxy:x:999:995::/var/lib/istio:/usr/sbin/nologin\n");
  const cluster = join(dir, "cluster.env");
  const sidecarPath = join(dir, "sidecar.env");
  writeFileSync(cluster, "ISTIO_SERVICE_CIDR=10.96.0.0/12\n");
  writeFileSync(sidecarPath, sidecar);
  return {
    root,
    cluster,
    sidecar: sidecarPath,
    env: {
      PATH: process.env["PATH"] ?? "/usr/bin:/bin",
      ISTIO_VM_ROOT: root,
      // Should a broken build start the agent instead of refusing the configuration, it stays off shared ports.
      STATUS_PORT: String(await freePort()),
      ISTIO_AGENT_COMPONENTS: "certificates",
      ...env,
    },
  };
}

const COMMANDS: readonly (readonly string[])[] = [["config"], ["iptables", "plan"], ["agent"]];

interface BadCase {
  readonly name: string;
  readonly sidecar: string;
  readonly env?: Record<string, string>;
  /** What the one message must say: the variable, where from (a sidecar.env line or "environment"), what is wrong. */
  readonly expected: (vm: Vm) => RegExp;
}

const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

const BAD: readonly BadCase[] = [
  {
    name: "an IPv6 zone id with a prefix (used to crash with a RangeError)",
    sidecar: "ISTIO_SVC_IP=10.0.0.5\nISTIO_SERVICE_CIDR=fe80::%eth0/64\n",
    expected: (v) =>
      new RegExp(`${escape(v.sidecar)}:2: ISTIO_SERVICE_CIDR: 'fe80::%eth0/64' is not a CIDR: it has an IPv6 zone id`),
  },
  {
    name: "an IPv6 zone id without a prefix (used to be planned as /128)",
    sidecar: "ISTIO_SVC_IP=10.0.0.5\n",
    env: { ISTIO_SERVICE_CIDR: "fe80::1%eth0" },
    expected: () => /environment: ISTIO_SERVICE_CIDR: 'fe80::1%eth0' is not a CIDR: it has an IPv6 zone id \(%eth0\)/,
  },
  {
    name: "an empty item in a port list",
    sidecar: "ISTIO_SVC_IP=10.0.0.5\nISTIO_INBOUND_PORTS=3306,,80\n",
    expected: (v) => new RegExp(`${escape(v.sidecar)}:2: ISTIO_INBOUND_PORTS: '3306,,80' has an empty item`),
  },
  {
    name: "a leading zero in a prefix length",
    sidecar: "ISTIO_SVC_IP=10.0.0.5\nISTIO_SERVICE_EXCLUDE_CIDR=10.0.0.0/08\n",
    expected: (v) =>
      new RegExp(
        `${escape(v.sidecar)}:2: ISTIO_SERVICE_EXCLUDE_CIDR: '10\\.0\\.0\\.0/08': the prefix length '08' has a leading zero`,
      ),
  },
  {
    name: "a byte-order mark that is not at the start of the file",
    sidecar: "ISTIO_SVC_IP=10.0.0.5\n\ufeffISTIO_INBOUND_PORTS=80\n",
    expected: (v) =>
      new RegExp(`${escape(v.sidecar)}:2: sidecar\\.env: byte-order mark \\(U\\+FEFF\\) inside the file`),
  },
];

describe("configuration errors from the CLI", () => {
  for (const bad of BAD) {
    for (const command of COMMANDS) {
      it(`${command.join(" ")}: ${bad.name} → exit 2, one clear message, no stack trace`, async () => {
        const v = await vm(bad.sidecar, bad.env);
        const r = await runCli(command, { env: v.env, timeoutMs: 30_000 });
        const output = `${r.stdout}${r.stderr}`;
        expect(output).toMatch(bad.expected(v));
        expect(r.code).toBe(2);
        expect(output).not.toMatch(/^\s+at /m);
        expect(output).not.toMatch(/RangeError|TypeError/);
      });
    }
  }

  it("config --json: the problem as data, exit 2", async () => {
    const v = await vm("ISTIO_SVC_IP=10.0.0.5\nISTIO_SERVICE_CIDR=fe80::%eth0/64\n");
    const r = await runCli(["config", "--json"], { env: v.env });
    expect(r.code).toBe(2);
    const report = JSON.parse(r.stdout) as { problems: { subject: string; where?: string; message: string }[] };
    expect(report.problems).toHaveLength(1);
    expect(report.problems[0]).toMatchObject({ subject: "ISTIO_SERVICE_CIDR", where: `${v.sidecar}:2` });
    expect(report.problems[0]?.message).toContain("it has an IPv6 zone id (%eth0)");
  });
});

describe("what istio-vm config shows", () => {
  it("a file saved on Windows (BOM, CRLF) and spaces around list items are read as meant", async () => {
    const v = await vm("\ufeffISTIO_SVC_IP=10.0.0.5\r\nISTIO_INBOUND_PORTS='3306, 80 '\r\n");
    const r = await runCli(["config", "--json"], { env: v.env });
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as { variables: { name: string; value: string; source: string }[] };
    expect(report.variables.find((x) => x.name === "ISTIO_SVC_IP")).toMatchObject({
      value: "10.0.0.5",
      source: `${v.sidecar}:1`,
    });
    const plan = await runCli(["iptables", "plan"], { env: v.env });
    expect(plan.code).toBe(0);
    expect(plan.stdout).toContain("--dport 3306");
    expect(plan.stdout).toContain("--dport 80 ");
  });

  it("a key set twice: the last value is used, with a warning naming both lines", async () => {
    const v = await vm("ISTIO_SVC_IP=10.0.0.5\nISTIO_INBOUND_PORTS=3306\nISTIO_INBOUND_PORTS=8080\n");
    const r = await runCli(["config"], { env: v.env });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^ISTIO_INBOUND_PORTS\\s+8080\\s+${escape(v.sidecar)}:3$`, "m"));
    expect(r.stdout).toContain(
      `${v.sidecar}:3: ISTIO_INBOUND_PORTS: set twice, on ${v.sidecar}:2 and on ${v.sidecar}:3; the last one is used`,
    );
  });

  it("a 1 MB value is cut in the table (which stays small) and whole in --json", async () => {
    const big = "x".repeat(1024 * 1024);
    const v = await vm(`ISTIO_SVC_IP=10.0.0.5\nISTIO_META_BIG=${big}\n`);
    const table = await runCli(["config"], { env: v.env });
    expect(table.code).toBe(0);
    expect(table.stdout.length).toBeLessThan(20_000);
    expect(table.stdout).toMatch(/^ISTIO_META_BIG\s+x{60}… \(1048576 characters in all\)\s+\S+sidecar\.env:2$/m);
    expect(table.stdout).toMatch(/^ENVOY_PORT {2,40}15001 +default$/m);
    expect(table.stdout).toContain("`istio-vm config --json` shows them whole");
    const json = await runCli(["config", "--json"], { env: v.env });
    const report = JSON.parse(json.stdout) as { variables: { name: string; value: string }[] };
    expect(report.variables.find((x) => x.name === "ISTIO_META_BIG")?.value).toBe(big);
  });

  it("control characters are escaped in the table and exact in --json", async () => {
    const value = "\x1b[2J\x1b[31mred\rover\u202eevil";
    const v = await vm(`ISTIO_SVC_IP=10.0.0.5\nISTIO_META_ART='${value}'\n`);
    const table = await runCli(["config"], { env: v.env });
    expect(table.code).toBe(0);
    for (const raw of ["\x1b", "\r", "\u202e"]) expect(table.stdout).not.toContain(raw);
    expect(table.stdout).toMatch(/^ISTIO_META_ART\s+\\x1b\[2J\\x1b\[31mred\\rover\\u\{202e\}evil\s/m);
    const json = await runCli(["config", "--json"], { env: v.env });
    const report = JSON.parse(json.stdout) as { variables: { name: string; value: string }[] };
    expect(report.variables.find((x) => x.name === "ISTIO_META_ART")?.value).toBe(value);
  });
});
