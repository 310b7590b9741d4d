import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { runCli } from "../support/cli.js";

const root = mkdtempSync(join(tmpdir(), "istio-vm-cli-"));
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

/** Command names listed by `istio-vm --help`. */
async function listedCommands(): Promise<string[]> {
  const { stdout } = await runCli(["--help"]);
  const section = stdout.split("Commands:")[1]?.split("Options:")[0] ?? "";
  return [...section.matchAll(/^\s+istio-vm ([a-z-]+)/gm)].map((m) => m[1] ?? "");
}

describe("the istio-vm CLI", () => {
  it("--help lists the commands and exits 0; --version prints the package version", async () => {
    const help = await runCli(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("istio-vm <command> [options]");
    expect(await listedCommands()).toEqual(expect.arrayContaining(["agent", "config"]));
    const version = await runCli(["--version"]);
    expect(version.code).toBe(0);
    expect(version.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });

  it("every command has its own --help", async () => {
    for (const command of await listedCommands()) {
      const { code, stdout } = await runCli([command, "--help"]);
      expect({ command, code }).toEqual({ command, code: 0 });
      expect(stdout).toContain(`istio-vm ${command}`);
    }
  });

  it("an unknown command or a bad flag is a usage error: exit 2 with a hint", async () => {
    const unknown = await runCli(["frobnicate"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("Unknown argument: frobnicate");
    expect(unknown.stderr).toContain("hint: run `istio-vm --help`");
    const badFlag = await runCli(["config", "--no-such-flag"]);
    expect(badFlag.code).toBe(2);
    const badLevel = await runCli(["config", "--log-level", "loud"]);
    expect(badLevel.code).toBe(2);
    const none = await runCli([]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain("name a command");
  });

  it("config: values with their sources, problems listed, exit 2 when invalid; --json for machines", async () => {
    mkdirSync(join(root, "var/lib/istio/envoy"), { recursive: true });
    writeFileSync(join(root, "var/lib/istio/envoy/cluster.env"), "ISTIO_SERVICE_CIDR=10.96.0.0/12\n");
    writeFileSync(join(root, "var/lib/istio/envoy/sidecar.env"), "ISTIO_SVC_IP=10.0.0.5\nISTIO_INBOUND_PORTS=3306\n");
    const env = { PATH: process.env["PATH"] ?? "", ISTIO_VM_ROOT: root, ISTIO_NAMESPACE: "bookinfo" };
    const text = await runCli(["config"], { env });
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^ISTIO_INBOUND_PORTS\s+3306\s+\S+sidecar\.env:2$/m);
    expect(text.stdout).toMatch(/^ISTIO_NAMESPACE\s+bookinfo\s+environment$/m);
    expect(text.stdout).toMatch(/^ENVOY_PORT\s+15001\s+default$/m);
    expect(text.stdout).toContain("configuration is valid");

    const json = await runCli(["config", "--changed", "--json"], { env });
    const report = JSON.parse(json.stdout) as { variables: { name: string; source: string }[]; problems: unknown[] };
    expect(report.problems).toEqual([]);
    expect(report.variables.map((v) => v.name).sort()).toEqual(
      ["ISTIO_INBOUND_PORTS", "ISTIO_NAMESPACE", "ISTIO_SERVICE_CIDR", "ISTIO_SVC_IP", "ISTIO_VM_ROOT"].sort(),
    );

    writeFileSync(join(root, "var/lib/istio/envoy/sidecar.env"), "ISTIO_INBOUND_PORTS=0\nISTIO_SVC_IP=x\n");
    const bad = await runCli(["config"], { env });
    expect(bad.code).toBe(2);
    expect(bad.stdout).toContain("ISTIO_INBOUND_PORTS: port 0 is out of range");
    expect(bad.stdout).toContain("ISTIO_SVC_IP: 'x' is not an IP address");
  });

  it("a malformed kubeconfig is a configuration error: exit 2, one line naming file:line:column, a hint, no stack", async () => {
    const kubeconfig = join(root, "broken-kubeconfig");
    writeFileSync(kubeconfig, "apiVersion: v1\nclusters:\n- name: a\n  cluster: {server: https://a\nusers: []\n");
    const result = await runCli(["cluster-env", "--kubeconfig", kubeconfig, "-o", join(root, "cluster.env")]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(new RegExp(`cannot parse kubeconfig ${kubeconfig}:\\d+:\\d+: `));
    expect(result.stderr).toContain("hint: fix the YAML");
    expect(result.stderr).not.toMatch(/^\s+at /m);
  });
});
