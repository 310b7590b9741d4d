/**
 * The .deb as dpkg, lintian and systemd see it, and the single executable inside it run with no Node.js around.
 * Builds dist/istio-vm-agent_<version>_amd64.deb first when it is missing or stale (see test/e2e/deb-package.ts).
 */
import { spawn, spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VARIABLE_NAMES, VARIABLES } from "../../src/config/registry.js";
import { bashComplete } from "../support/bash-completion.js";
import { freePort } from "../support/net.js";
import { NotifySocket } from "../support/notify-socket.js";
import { requirements } from "../support/requirements.js";
import { ensureDeb, packageVersion } from "../e2e/deb-package.js";

const missing = requirements({ tools: ["dpkg-deb", "lintian", "systemd-analyze", "strip", "dpkg-shlibdeps"] });

function run(
  cmd: string,
  args: readonly string[],
  env?: NodeJS.ProcessEnv,
): { code: number; out: string; err: string } {
  const result = spawnSync(cmd, args, { encoding: "utf8", env: env ?? process.env, maxBuffer: 64 * 1024 * 1024 });
  if (result.error !== undefined) throw result.error;
  return { code: result.status ?? -1, out: result.stdout, err: result.stderr };
}

describe.skipIf(missing !== undefined)("the Debian package", () => {
  let deb = "";
  let dir = "";
  let root = "";

  beforeAll(() => {
    deb = ensureDeb();
    dir = mkdtempSync(join(tmpdir(), "istio-vm-package-"));
    root = join(dir, "root");
    expect(run("dpkg-deb", ["-x", deb, root]).code).toBe(0);
  });

  afterAll(() => {
    if (dir !== "") rmSync(dir, { recursive: true, force: true });
  });

  it("declares the package, its dependencies, the conffile and the maintainer scripts", () => {
    const field = (name: string): string => run("dpkg-deb", ["-f", deb, name]).out.trim();
    expect(field("Package")).toBe("istio-vm-agent");
    expect(field("Version")).toBe(packageVersion());
    expect(field("Architecture")).toBe("amd64");
    const depends = field("Depends").split(/,\s*/);
    for (const dep of ["iptables", "iproute2", "passwd", "procps", "systemd"]) expect(depends).toContain(dep);
    expect(depends.some((d) => d.startsWith("libc6 (>= "))).toBe(true);
    expect(field("Recommends")).toBe("dnsmasq");

    const info = run("dpkg-deb", ["-I", deb]).out;
    for (const script of ["postinst", "prerm", "postrm"]) {
      expect(info).toMatch(new RegExp(`^\\s+\\d+ bytes,\\s+\\d+ lines\\s+\\*\\s+${script}\\s+#!/bin/sh$`, "m"));
    }
    expect(run("dpkg-deb", ["--ctrl-tarfile", deb]).code).toBe(0);
    const conffiles = run("sh", ["-c", `dpkg-deb --ctrl-tarfile '${deb}' | tar -xOf - ./conffiles`]).out;
    expect(conffiles).toBe("/var/lib/istio/envoy/sidecar.env\n");
  });

  it("contains exactly the expected files, owned by root, with the expected modes", () => {
    const files = run("dpkg-deb", ["-c", deb])
      .out.trim()
      .split("\n")
      .map((line) => line.split(/\s+/))
      .filter((f) => !(f[0] ?? "").startsWith("d"))
      .map((f) => `${f[0] ?? ""} ${f[1] ?? ""} ${f[5] ?? ""}`)
      .sort();
    expect(files).toEqual(
      [
        "-rw-r--r-- root/root ./lib/systemd/system/istio-vm-agent.service",
        "-rwxr-xr-x root/root ./usr/bin/istio-vm",
        "-rw-r--r-- root/root ./usr/lib/istio-vm/node-unix-socket.node",
        "-rw-r--r-- root/root ./usr/share/bash-completion/completions/istio-vm",
        "-rw-r--r-- root/root ./usr/share/doc/istio-vm-agent/changelog.gz",
        "-rw-r--r-- root/root ./usr/share/doc/istio-vm-agent/copyright",
        "-rw-r--r-- root/root ./usr/share/lintian/overrides/istio-vm-agent",
        "-rw-r--r-- root/root ./usr/share/man/man1/istio-vm.1.gz",
        "-rw-r--r-- root/root ./var/lib/istio/envoy/sidecar.env",
      ].sort(),
    );
  });

  it("ships a sidecar.env that documents every variable and sets none", () => {
    const text = run("cat", [join(root, "var/lib/istio/envoy/sidecar.env")]).out;
    for (const name of VARIABLE_NAMES.filter((n) => VARIABLES[n].home !== "environment")) {
      expect(text).toMatch(new RegExp(`^#${name}=`, "m"));
    }
    expect(text.split("\n").filter((l) => l !== "" && !l.startsWith("#"))).toEqual([]);
  });

  it("installs bash completion that completes commands, flags and choices through the packaged executable", () => {
    const script = join(root, "usr/share/bash-completion/completions/istio-vm");
    const bin = join(root, "usr/bin");
    expect(bashComplete(script, bin, ["ce"])).toEqual(["certs"]);
    expect(bashComplete(script, bin, ["cluster-env", "--pro"]).sort()).toEqual(["--profile", "--proxy-config"]);
    expect(bashComplete(script, bin, ["dev", "--profile", ""]).sort()).toEqual(["istiod", "legacy", "none"]);
  });

  it("passes lintian with no errors and no warnings", () => {
    const result = run("lintian", ["--fail-on", "error,warning", deb]);
    process.stdout.write(`lintian:\n${result.out}${result.err}`);
    expect(result.out.split("\n").filter((l) => /^[EW]: /.test(l))).toEqual([]);
    expect(result.code).toBe(0);
  });

  it("runs the single executable with no Node.js and an empty environment", () => {
    const exe = join(root, "usr/bin/istio-vm");
    const version = run(exe, ["--version"], {});
    expect(version).toEqual({ code: 0, out: `${packageVersion()}\n`, err: "" });
    const help = run(exe, ["--help"], {});
    expect(help.code).toBe(0);
    expect(help.err).toBe("");
    expect(help.out).toContain("istio-vm agent");
    expect(help.out).toContain("istio-vm config");
    // A command that loads modules at run time: the configuration of an empty root, as JSON.
    const config = run(exe, ["config", "--json"], { ISTIO_VM_ROOT: join(dir, "vm") });
    expect(config.err).toBe("");
    const report = JSON.parse(config.out) as { variables: { name: string; value: string }[] };
    expect(report.variables.find((v) => v.name === "STATUS_PORT")?.value).toBe("15020");
    // A usage error exits 2, as from the bundle.
    expect(run(exe, ["no-such-command"], {}).code).toBe(2);
  });

  it("speaks sd_notify through the addon it ships, with no systemd-notify to fall back on", async () => {
    // PATH is empty, so the agent cannot run systemd-notify: READY=1 can only come from the node-unix-socket addon,
    // loaded with process.dlopen from <dirname(execPath)>/../lib/istio-vm/ inside the single executable.
    const vm = join(dir, "vm-notify");
    mkdirSync(join(vm, "var/lib/istio/envoy"), { recursive: true });
    writeFileSync(join(vm, "var/lib/istio/envoy/cluster.env"), "ISTIO_SERVICE_CIDR=10.96.0.0/12\n");
    const port = await freePort();
    writeFileSync(
      join(vm, "var/lib/istio/envoy/sidecar.env"),
      `ISTIO_SVC_IP=10.0.0.5\nSTATUS_PORT=${port}\nISTIO_AGENT_COMPONENTS=\n`,
    );
    const notify = new NotifySocket(join(vm, "notify.sock"));
    const child = spawn(join(root, "usr/bin/istio-vm"), ["agent"], {
      env: { PATH: "", ISTIO_VM_ROOT: vm, NOTIFY_SOCKET: notify.path },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const exit = new Promise<number | null>((resolve) =>
      child.on("exit", (code) => {
        resolve(code);
      }),
    );
    try {
      const ready = await Promise.race([
        notify.waitFor("READY", "1"),
        exit.then((code) => Promise.reject(new Error(`agent exited ${code ?? "?"}: ${stderr}`))),
      ]);
      expect(ready["STATUS"] ?? "").not.toBe("");
      expect(stderr).not.toMatch(/sd_notify failed/);
      child.kill("SIGTERM");
      await notify.waitFor("STOPPING", "1");
      expect(await exit).toBe(0);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      notify.close();
    }
  });

  it("prints systemd-analyze security for the unit and stays at 3.0 or lower", () => {
    const unit = join(root, "lib/systemd/system/istio-vm-agent.service");
    const result = run("systemd-analyze", ["security", "--offline=true", "--no-pager", unit]);
    process.stdout.write(result.out);
    const score = /Overall exposure level for istio-vm-agent\.service: (\d+\.\d)/.exec(result.out)?.[1];
    expect(score, result.out + result.err).toBeDefined();
    expect(Number(score)).toBeLessThanOrEqual(3.0);
  });

  it("passes systemd-analyze verify with nothing on stderr", () => {
    // verify resolves dependencies and checks that Exec*= binaries exist: a root made of the package, the host's
    // own units (sysinit.target, …) and /bin/kill (procps, a dependency).
    const verifyRoot = join(dir, "verify-root");
    cpSync(root, verifyRoot, { recursive: true });
    cpSync("/lib/systemd/system", join(verifyRoot, "lib/systemd/system"), { recursive: true, force: false });
    cpSync("/bin/kill", join(verifyRoot, "bin/kill"));
    const result = run("systemd-analyze", ["verify", "--man=no", `--root=${verifyRoot}`, "istio-vm-agent.service"]);
    expect(result.err).toBe("");
    expect(result.code).toBe(0);
  });
});
