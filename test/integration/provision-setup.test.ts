/**
 * `istio-vm setup` against real OpenSSH servers in network namespaces the test creates (test/integration/
 * provision-fleet.ts): five at once with one unreachable, retries, the default remote script with a stand-in
 * istio-vm, a failing remote command that is not retried, plain progress lines, and --cloud-init user-data.
 */
import { createHash } from "node:crypto";
import { chmod, mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { requirements } from "../support/requirements.js";
import type { Fleet } from "./provision-fleet.js";
import { FLEET_TOOLS, run, startFleet } from "./provision-fleet.js";

const missing = requirements({ root: true, tools: [...FLEET_TOOLS, "python3", "dpkg-deb"] });

/** Connections an sshd accepted so far (its log at the default level has one line per authenticated connection). */
function accepted(log: string): number {
  return log.match(/^Accepted publickey for /gm)?.length ?? 0;
}

/** PIDs of processes whose command line mentions `text` (the ssh masters of one run name its control directory). */
async function processesMentioning(text: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, "utf8").catch(() => "");
    if (cmdline.includes(text)) pids.push(Number(entry));
  }
  return pids;
}

/** A small real .deb of package istio-vm-agent (nothing in it is ever installed: the remote command lists it). */
async function makeDeb(dir: string, version: string): Promise<string> {
  const root = join(dir, `deb-${version}`);
  await mkdir(join(root, "DEBIAN"), { recursive: true });
  await writeFile(
    join(root, "DEBIAN", "control"),
    `Package: istio-vm-agent\nVersion: ${version}\nArchitecture: amd64\nMaintainer: test <t@example.org>\nDescription: stand-in\n`,
  );
  await mkdir(join(root, "usr", "share", "doc", "istio-vm-agent"), { recursive: true });
  await writeFile(join(root, "usr", "share", "doc", "istio-vm-agent", "README"), "stand-in\n");
  const out = join(dir, `istio-vm-agent_${version}_amd64.deb`);
  const built = await run("dpkg-deb", ["--root-owner-group", "--build", root, out]);
  if (built.code !== 0) throw new Error(built.stderr);
  return out;
}

/** A bundle made with `bundle --from` out of small stand-in files (setup does not look inside credentials). */
async function makeBundle(fleet: Fleet, name: string, extra: readonly string[] = []): Promise<string> {
  const from = join(fleet.dir, `from-${name}`);
  await mkdir(from, { recursive: true });
  await writeFile(join(from, "cluster.env"), "ISTIO_CONTROL_PLANE=legacy\nISTIO_SERVICE_CIDR=10.96.0.0/12\n");
  await writeFile(join(from, "kubedns"), "server=/svc.cluster.local/10.128.0.6\naddress=/istio-pilot/10.128.0.8\n");
  for (const f of ["root-cert.pem", "cert-chain.pem", "key.pem"]) await writeFile(join(from, f), `${f}\n`);
  const out = join(fleet.dir, `${name}.tgz`);
  const debArgs = extra.includes("--deb") ? [] : ["--no-deb"];
  const made = await fleet.cli(["bundle", "--from", from, ...debArgs, "-o", out, ...extra]);
  if (made.code !== 0) throw new Error(made.stderr);
  return out;
}

describe.skipIf(missing !== undefined)("setup over SSH to namespace VMs", () => {
  let fleet: Fleet | undefined;
  const f = (): Fleet => {
    if (fleet === undefined) throw new Error("no fleet");
    return fleet;
  };
  let bundle = "";

  beforeAll(async () => {
    fleet = await startFleet({
      size: 5,
      withoutSshd: [3],
      sshdExtra: [],
    });
    bundle = await makeBundle(fleet, "b");
  }, 60_000);
  afterAll(async () => {
    await fleet?.dispose();
  });

  it("five hosts, one unreachable: four succeed, one fails after its retries, exit 1, every host in the table", async () => {
    // Other runs may share /root: only copies this run leaves behind count.
    const copiesBefore = (await readdir("/root")).filter((n) => n.startsWith(".istio-vm-bundle-"));
    const sha = createHash("sha256")
      .update(await readFile(bundle))
      .digest("hex");
    const result = await f().cli([
      "setup",
      ...f().hosts,
      "--bundle",
      bundle,
      "--ssh",
      f().ssh,
      "--scp",
      f().scp,
      "--retries",
      "2",
      "--retry-delay",
      "200ms",
      "--connect-timeout",
      "3s",
      // Proves the copy arrived whole, and that {host} is this host.
      "--remote-command",
      "echo {host} $(sha256sum {bundle} | cut -c1-64)",
    ]);
    expect(result.code, result.stderr).toBe(1);
    const rows = result.stdout.split("\n").filter((l) => l.startsWith("10.252."));
    expect(rows).toHaveLength(5);
    const unreachable = f().hosts[3] ?? "";
    for (const host of f().hosts) {
      const row = rows.find((r) => r.startsWith(`${host} `)) ?? "";
      if (host === unreachable) {
        expect(row).toMatch(new RegExp(`^${host.replaceAll(".", "\\.")}\\s+FAILED \\(copy\\)\\s+3\\s`));
        expect(row).toMatch(/Connection refused|Connection closed|lost connection/);
      } else {
        expect(row).toMatch(
          new RegExp(`^${host.replaceAll(".", "\\.")}\\s+ok\\s+2\\s+\\S+s\\s+${host.replaceAll(".", "\\.")} ${sha}$`),
        );
      }
    }
    expect(result.stdout).toContain("1 of 5 hosts failed");
    // Not a terminal: one plain line per change, including the retries.
    expect(result.stderr).toMatch(new RegExp(`^${unreachable.replaceAll(".", "\\.")}: retrying \\(attempt 2\\)`, "m"));
    expect(result.stderr).toMatch(/^10\.252\.1\.2: ok after [\d.]+s/m);
    expect(result.stderr).not.toContain("\x1b[");
    // The copies were removed after the remote command (the "VMs" share this machine's /root).
    expect(
      (await readdir("/root")).filter((n) => n.startsWith(".istio-vm-bundle-") && !copiesBefore.includes(n)),
    ).toEqual([]);
  });

  it("--json: one object per host", async () => {
    const result = await f().cli([
      "setup",
      f().hosts[0] ?? "",
      f().hosts[3] ?? "",
      "--bundle",
      bundle,
      "--ssh",
      f().ssh,
      "--scp",
      f().scp,
      "--retries",
      "0",
      "--remote-command",
      "true",
      "--json",
    ]);
    expect(result.code).toBe(1);
    const report = JSON.parse(result.stdout) as { ok: boolean; hosts: { host: string; ok: boolean; step?: string }[] };
    expect(report.ok).toBe(false);
    expect(report.hosts.map((h) => [h.host, h.ok])).toEqual([
      [f().hosts[0], true],
      [f().hosts[3], false],
    ]);
  });

  it("does not retry a remote command that failed (only SSH's own exit 255)", async () => {
    const result = await f().cli([
      "setup",
      f().hosts[1] ?? "",
      "--bundle",
      bundle,
      "--ssh",
      f().ssh,
      "--scp",
      f().scp,
      "--retry-delay",
      "100ms",
      "--remote-command",
      "echo 'install said no' >&2; exit 3",
    ]);
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/^10\.252\.2\.2\s+FAILED \(install\)\s+2\s+\S+\s+install said no$/m);
  });

  it("runs the default script: no bootstrap when istio-vm exists, install with the host's ISTIO_SVC_IP", async () => {
    // A stand-in istio-vm first in PATH of the SSH sessions records how it was called.
    const bin = join(f().dir, "bin");
    await mkdir(bin, { recursive: true });
    const record = join(f().dir, "calls");
    await writeFile(join(bin, "istio-vm"), `#!/bin/sh\necho "$(id -u) $*" >> ${record}\necho "installed (stand-in)"\n`);
    await chmod(join(bin, "istio-vm"), 0o755);
    const env = join(f().dir, "environment");
    await writeFile(env, `PATH=${bin}:/usr/sbin:/usr/bin:/sbin:/bin\n`);
    const withEnv = await startFleet({ size: 2, sshdExtra: [`SetEnv PATH=${bin}:/usr/sbin:/usr/bin:/sbin:/bin`] });
    try {
      const b = await makeBundle(withEnv, "svc", []);
      const result = await withEnv.cli([
        "setup",
        ...withEnv.hosts,
        "--bundle",
        b,
        "--ssh",
        withEnv.ssh,
        "--scp",
        withEnv.scp,
      ]);
      expect(result.code, result.stdout + result.stderr).toBe(0);
      expect(result.stdout).toContain("all 2 hosts set up");
      const calls = (await readFile(record, "utf8")).trim().split("\n").sort();
      expect(calls).toHaveLength(2);
      for (const [i, host] of withEnv.hosts.entries()) {
        expect(calls[i]).toMatch(
          new RegExp(
            `^0 install \\.istio-vm-bundle-[0-9a-f]{12}-${host.replaceAll(".", "\\.")}\\.tgz --set ISTIO_SVC_IP=${host.replaceAll(".", "\\.")}$`,
          ),
        );
      }
      // A bundle that sets ISTIO_SVC_IP itself is not overridden per host.
      const fixed = await makeBundle(withEnv, "fixed", ["--svc-ip", "10.9.9.9"]);
      const again = await withEnv.cli([
        "setup",
        withEnv.hosts[0] ?? "",
        "--bundle",
        fixed,
        "--ssh",
        withEnv.ssh,
        "--scp",
        withEnv.scp,
      ]);
      expect(again.code, again.stderr).toBe(0);
      expect((await readFile(record, "utf8")).trim().split("\n").pop()).toMatch(/^0 install \S+$/);
    } finally {
      await withEnv.dispose();
    }
  });

  it("shares one SSH connection per host between the steps, and leaves no master or socket behind", async () => {
    const tmp = join(f().dir, "tmp-multiplex");
    await mkdir(tmp, { recursive: true });
    const hosts = [f().hosts[0] ?? "", f().hosts[1] ?? ""];
    const before = [0, 1].map((i) => accepted(f().sshd[i]?.log() ?? ""));
    const result = await f().cli(
      ["setup", ...hosts, "--bundle", bundle, "--ssh", f().ssh, "--scp", f().scp, "--remote-command", "true"],
      { env: { TMPDIR: tmp } },
    );
    expect(result.code, result.stderr).toBe(0);
    // scp and the remote run went over one connection per host (two each without ControlMaster).
    expect([0, 1].map((i) => accepted(f().sshd[i]?.log() ?? "") - (before[i] ?? 0))).toEqual([1, 1]);
    // The masters were told to exit, and the private socket directory is gone.
    expect(await readdir(tmp)).toEqual([]);
    expect(await processesMentioning(tmp)).toEqual([]);

    const separate = await f().cli(
      [
        "setup",
        hosts[0] ?? "",
        "--bundle",
        bundle,
        "--ssh",
        f().ssh,
        "--scp",
        f().scp,
        "--remote-command",
        "true",
      ].concat("--no-multiplex"),
    );
    expect(separate.code, separate.stderr).toBe(0);
    expect(accepted(f().sshd[0]?.log() ?? "") - (before[0] ?? 0)).toBe(3);
  });

  it("copies the .deb only to hosts that lack its version; a failed host does not stop the others", async () => {
    // dpkg-query on the "VMs" is a stand-in: the first host has 0.2.0 installed, the second 0.1.0, the third none.
    const bin = join(f().dir, "bin-dpkg");
    await mkdir(bin, { recursive: true });
    const [h0 = "", h1 = ""] = f().hosts;
    await writeFile(
      join(bin, "dpkg-query"),
      [
        "#!/bin/sh",
        'case "$SSH_CONNECTION" in',
        `  *" ${h0} "*) printf 'install ok installed\\t0.2.0\\n' ;;`,
        `  *" ${h1} "*) printf 'install ok installed\\t0.1.0\\n' ;;`,
        "  *) echo 'dpkg-query: no packages found matching istio-vm-agent' >&2; exit 1 ;;",
        "esac",
        "",
      ].join("\n"),
    );
    await chmod(join(bin, "dpkg-query"), 0o755);
    const fleet2 = await startFleet({
      size: 4,
      withoutSshd: [3],
      sshdExtra: [`SetEnv PATH=${bin}:/usr/sbin:/usr/bin:/sbin:/bin`],
    });
    try {
      const deb = await makeDeb(fleet2.dir, "0.2.0");
      const withDeb = await makeBundle(fleet2, "deb", ["--deb", deb]);
      const tmp = join(fleet2.dir, "tmp");
      await mkdir(tmp);
      const result = await fleet2.cli(
        [
          "setup",
          ...fleet2.hosts,
          "--bundle",
          withDeb,
          "--ssh",
          fleet2.ssh,
          "--scp",
          fleet2.scp,
          "--retries",
          "0",
          "--remote-command",
          "echo $(tar -tzf {bundle} | grep -c 'deb$')",
          "--json",
        ],
        { env: { TMPDIR: tmp } },
      );
      expect(result.code, result.stderr).toBe(1);
      const report = JSON.parse(result.stdout) as {
        hosts: { host: string; ok: boolean; package?: string; detail: string; step?: string }[];
      };
      expect(report.hosts.map((h) => [h.host, h.ok, h.package ?? null, h.ok ? h.detail : h.step])).toEqual([
        [fleet2.hosts[0], true, "present", "0"],
        [fleet2.hosts[1], true, "copied", "1"],
        [fleet2.hosts[2], true, "copied", "1"],
        [fleet2.hosts[3], false, null, "check"],
      ]);
      // The bundle without the .deb and the socket directory were temporary.
      expect(await readdir(tmp)).toEqual([]);
    } finally {
      await fleet2.dispose();
    }
  });

  it("rejects bad usage before connecting anywhere", async () => {
    const noHosts = await f().cli(["setup", "--bundle", bundle]);
    expect(noHosts.code).toBe(2);
    expect(noHosts.stderr).toContain("name at least one host");
    const dup = await f().cli(["setup", "a", "a", "--bundle", bundle]);
    expect(dup.code).toBe(2);
    expect(dup.stderr).toContain("host given twice: a");
    const parallel = await f().cli(["setup", "a", "--parallel", "0", "--bundle", bundle]);
    expect(parallel.code).toBe(2);
  });

  it("--cloud-init: valid YAML user-data with the bundle base64 (0600) and a first-boot runcmd", async () => {
    const out = join(f().dir, "user-data.yaml");
    const result = await f().cli(["setup", "--cloud-init", "--bundle", bundle, "-o", out]);
    expect(result.code, result.stderr).toBe(0);
    const text = await readFile(out, "utf8");
    expect(text.startsWith("#cloud-config\n")).toBe(true);
    const parsed = await run("python3", [
      "-c",
      "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
      out,
    ]);
    expect(parsed.code, parsed.stderr).toBe(0);
    const doc = JSON.parse(parsed.stdout) as {
      write_files: { path: string; permissions: string; owner: string; encoding: string; content: string }[];
      runcmd: string[][];
    };
    const file = doc.write_files[0];
    expect(file?.permissions).toBe("0600");
    expect(file?.owner).toBe("root:root");
    expect(file?.encoding).toBe("b64");
    expect(Buffer.from(file?.content ?? "", "base64").equals(await readFile(bundle))).toBe(true);
    const script = doc.runcmd[0]?.[2] ?? "";
    expect(doc.runcmd[0]?.slice(0, 2)).toEqual(["sh", "-c"]);
    expect(script).toContain('istio-vm install bundle.tgz --set "ISTIO_SVC_IP=$(ip -4 route get');
    expect(script).toContain("istio-vm is not installed and the bundle has no .deb");
    // The script is valid sh.
    expect((await run("sh", ["-n", "-c", script])).code).toBe(0);
  });
});
