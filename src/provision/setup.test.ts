import { describe, expect, it } from "vitest";
import type { Clock } from "../platform/clock.js";
import type { ProcessRunner, RunResult } from "../platform/process.js";
import { renderFrame, renderPlainLine } from "./progress.js";
import type { HostStatus, SetupSettings } from "./setup.js";
import {
  backoffMs,
  checkCommand,
  closeCommand,
  copyCommand,
  hasPackageVersion,
  parseHost,
  parseLogin,
  remoteScript,
  runCommand,
  runSetup,
  scpLostConnection,
} from "./setup.js";

const settings: SetupSettings = {
  ssh: { ssh: ["ssh", "-F", "cfg"], scp: ["scp"], user: "admin", port: 2222, identity: "id", connectTimeoutS: 5 },
  bundlePath: "/tmp/b.tgz",
  remoteName: ".istio-vm-bundle-abc",
  debMember: "istio-vm-agent_1.0.0_amd64.deb",
  bundleHasSvcIp: false,
  parallel: 2,
  retries: 2,
  retryBaseMs: 1000,
  commandTimeoutMs: 60_000,
};

class CountingClock implements Clock {
  slept: number[] = [];
  t = 0;
  now(): number {
    return this.t;
  }
  monotonic(): number {
    return this.t;
  }
  sleep(ms: number): Promise<void> {
    this.slept.push(ms);
    this.t += ms;
    return Promise.resolve();
  }
}

/** ssh/scp as seen from the outside: per host, a list of exit codes to give in turn (then 0). */
class ScriptedSsh implements ProcessRunner {
  readonly calls: string[] = [];
  constructor(private readonly codes: Map<string, number[]>) {}
  run(command: string, args: readonly string[]): Promise<RunResult> {
    const host = args.find((a) => a.startsWith("10.") || a.includes("@10.")) ?? "";
    const key = host.replace(/^.*@/, "").replace(/:.*$/, "");
    this.calls.push(`${command} ${key}`);
    const code = this.codes.get(key)?.shift() ?? 0;
    return Promise.resolve({
      code,
      signal: null,
      stdout: code === 0 ? "done\n" : "",
      stderr: code === 255 ? "ssh: connect to host: Connection refused\n" : code === 0 ? "" : "remote failed\n",
      timedOut: false,
    });
  }
}

describe("setup commands", () => {
  it("builds scp and ssh command lines with the user's options, BatchMode and a per-host remote name", () => {
    expect(copyCommand(settings, "10.0.0.5")).toEqual({
      command: "scp",
      args: [
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        "-P",
        "2222",
        "-i",
        "id",
        "-q",
        "--",
        "/tmp/b.tgz",
        "admin@10.0.0.5:.istio-vm-bundle-abc-10.0.0.5.tgz",
      ],
    });
    expect(copyCommand(settings, "root@fd00::5").args.at(-1)).toBe("root@[fd00::5]:.istio-vm-bundle-abc-fd00__5.tgz");
    const ssh = runCommand(settings, "10.0.0.5");
    expect(ssh.command).toBe("ssh");
    expect(ssh.args.slice(0, 12)).toEqual([
      "-F",
      "cfg",
      "-o",
      "BatchMode=yes",
      "-o",
      "ConnectTimeout=5",
      "-p",
      "2222",
      "-i",
      "id",
      "-l",
      "admin",
    ]);
    expect(ssh.args.slice(12, 14)).toEqual(["--", "10.0.0.5"]);
    expect(ssh.args).toHaveLength(15);
    expect(ssh.args[14]).toMatch(/^sh -c /);
    expect(parseHost("a@b@host")).toEqual({ user: "a@b", host: "host" });
  });

  it("accepts login names, host names, IPv4 and IPv6 (bracketed or not, with a zone)", () => {
    expect(parseHost("vm1")).toEqual({ user: undefined, host: "vm1" });
    expect(parseHost("admin@vm-1.example.org.")).toEqual({ user: "admin", host: "vm-1.example.org." });
    expect(parseHost("first.last@my_alias")).toEqual({ user: "first.last", host: "my_alias" });
    expect(parseHost("jdoe@corp.example@10.0.0.5")).toEqual({ user: "jdoe@corp.example", host: "10.0.0.5" });
    expect(parseHost("MACHINE$@10.0.0.5")).toEqual({ user: "MACHINE$", host: "10.0.0.5" });
    expect(parseHost("root@fd00::5")).toEqual({ user: "root", host: "fd00::5" });
    expect(parseHost("root@[fd00::5]")).toEqual({ user: "root", host: "fd00::5" });
    expect(parseHost("[fe80::1%eth0]")).toEqual({ user: undefined, host: "fe80::1%eth0" });
  });

  it.each([
    ["x@-oBogusOption=1", "'-oBogusOption=1' is not a host name"],
    ["-oProxyCommand=sh", "'-oProxyCommand=sh' is not a host name"],
    ["-lroot@vm1", "'-lroot' is not a login name"],
    ["@vm1", "'' is not a login name"],
    ["vm1@", "'' is not a host name"],
    ["user@vm1:22", "'vm1:22' is not a host name"],
    ["vm 1", "'vm 1' is not a host name"],
    ["vm1;reboot", "'vm1;reboot' is not a host name"],
    ["[vm1]", "'vm1' in brackets is not an IPv6 address"],
    ["[fe80::1%eth0;x]", "in brackets is not an IPv6 address"],
    ["a..b", "'a..b' is not a host name"],
    ["-vm1.example.org", "is not a host name"],
    ["vm1.-x", "is not a host name"],
    ["x".repeat(64), "is not a host name"],
  ])("refuses %j: %s", (raw, message) => {
    expect(() => parseHost(raw)).toThrow(message);
  });

  it("refuses a --user that ssh or scp could read as an option", () => {
    expect(parseLogin("admin")).toBe("admin");
    expect(() => parseLogin("-oProxyCommand=sh")).toThrow("--user '-oProxyCommand=sh' is not a login name");
    expect(() => parseLogin("a:b")).toThrow("is not a login name");
  });

  it("puts every host after `--`, on the scp and on the ssh command line", () => {
    for (const host of ["vm1", "admin@10.0.0.5", "root@[fd00::5]", "fe80::1%eth0"]) {
      const scp = copyCommand(settings, host).args;
      expect(scp.indexOf("--")).toBe(scp.length - 3);
      const ssh = runCommand(settings, host).args;
      expect(ssh.indexOf("--")).toBe(ssh.length - 3);
      expect(ssh.at(-2)).toBe(parseHost(host).host);
    }
  });

  it("bootstraps the .deb only when istio-vm is missing, checks it against SHA256SUMS, passes the host's IP", () => {
    const script = remoteScript(settings, "10.0.0.5");
    expect(script).toContain("if ! command -v istio-vm >/dev/null 2>&1; then");
    expect(script).toContain("grep '  istio-vm-agent_1.0.0_amd64.deb$' SHA256SUMS | sha256sum -c --quiet -");
    expect(script).toContain("$SUDO istio-vm install .istio-vm-bundle-abc-10.0.0.5.tgz --set ISTIO_SVC_IP=10.0.0.5");
    expect(script).toContain("rm -f .istio-vm-bundle-abc-10.0.0.5.tgz");
    expect(remoteScript(settings, "vm1.example.org")).not.toContain("ISTIO_SVC_IP");
    expect(remoteScript({ ...settings, bundleHasSvcIp: true }, "10.0.0.5")).not.toContain("ISTIO_SVC_IP");
    expect(remoteScript({ ...settings, remoteCommand: "echo {host} {bundle}" }, "10.0.0.5")).toBe(
      "(\necho 10.0.0.5 .istio-vm-bundle-abc-10.0.0.5.tgz\n)\nrc=$?; rm -f .istio-vm-bundle-abc-10.0.0.5.tgz; exit $rc\n",
    );
  });

  it("backs off exponentially up to 30 s", () => {
    expect([1, 2, 3, 4, 10].map((a) => backoffMs(a, 1000))).toEqual([1000, 2000, 4000, 8000, 30_000]);
  });
});

describe("runSetup", () => {
  it("retries only SSH's own failures, with backoff; one failing host never stops the others", async () => {
    const clock = new CountingClock();
    const runner = new ScriptedSsh(
      new Map([
        ["10.0.0.1", [255, 0]], // copy fails once, then works
        ["10.0.0.2", [255, 255, 255]], // never reachable: 1 + 2 retries
        ["10.0.0.3", [0, 3]], // copy ok, remote install fails: not retried
      ]),
    );
    const updates: HostStatus[] = [];
    const results = await runSetup(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"], settings, {
      runner,
      clock,
      onUpdate: (s) => updates.push(s),
    });
    expect(results.map((r) => [r.host, r.ok, r.attempts, r.step])).toEqual([
      ["10.0.0.1", true, 3, undefined],
      ["10.0.0.2", false, 3, "copy"],
      ["10.0.0.3", false, 2, "install"],
      ["10.0.0.4", true, 2, undefined],
    ]);
    expect(results[1]?.detail).toBe("ssh: connect to host: Connection refused");
    expect(results[2]?.detail).toBe("remote failed");
    expect(clock.slept.sort((a, b) => a - b)).toEqual([1000, 1000, 2000]);
    expect(updates.filter((u) => u.host === "10.0.0.2").map((u) => u.phase)).toEqual([
      "queued",
      "copying",
      "waiting",
      "copying",
      "waiting",
      "copying",
      "failed",
    ]);
  });
});

describe("one bundle for the fleet, the .deb only where it is missing, one connection per host", () => {
  const fleet: SetupSettings = {
    ...settings,
    ssh: { ...settings.ssh, multiplex: { controlDir: "/tmp/istio-vm-ssh-x", persistS: 60 } },
    package: { name: "istio-vm-agent", version: "1.0.0", slimBundlePath: "/tmp/b-no-deb.tgz" },
  };

  it("every ssh and scp of a host names the same control socket; the close command ends it", () => {
    const socket = (args: readonly string[]): string | undefined =>
      args.find((a) => a.startsWith("ControlPath="))?.slice("ControlPath=".length);
    const path = socket(copyCommand(fleet, "10.0.0.5").args);
    expect(path).toMatch(/^\/tmp\/istio-vm-ssh-x\/[0-9a-f]{12}$/);
    expect(socket(runCommand(fleet, "10.0.0.5").args)).toBe(path);
    expect(socket(checkCommand(fleet, "10.0.0.5").args)).toBe(path);
    expect(socket(copyCommand(fleet, "10.0.0.6").args)).not.toBe(path);
    expect(copyCommand(fleet, "10.0.0.5").args).toContain("ControlMaster=auto");
    expect(closeCommand(fleet, "10.0.0.5")).toEqual({
      command: "ssh",
      args: [
        "-F",
        "cfg",
        "-o",
        `ControlPath=${path ?? ""}`,
        "-p",
        "2222",
        "-l",
        "admin",
        "-O",
        "exit",
        "--",
        "10.0.0.5",
      ],
    });
    expect(closeCommand(settings, "10.0.0.5")).toBeUndefined();
    expect(copyCommand(settings, "10.0.0.5").args.join(" ")).not.toContain("Control");
  });

  it("asks dpkg for the version and reads its answer", () => {
    expect(checkCommand(fleet, "10.0.0.5").args.at(-1)).toBe(
      `sh -c 'dpkg-query -W -f '\\''\${Status}\\t\${Version}\\n'\\'' istio-vm-agent 2>/dev/null; true
'`,
    );
    expect(hasPackageVersion("install ok installed\t1.0.0\n", "1.0.0")).toBe(true);
    expect(hasPackageVersion("install ok installed\t0.9.0\n", "1.0.0")).toBe(false);
    expect(hasPackageVersion("deinstall ok config-files\t1.0.0\n", "1.0.0")).toBe(false);
    expect(hasPackageVersion("", "1.0.0")).toBe(false);
  });

  it("copies the bundle without the .deb to a host with the version, and the install does not bootstrap from it", () => {
    expect(copyCommand(fleet, "10.0.0.5", "without-deb").args.at(-2)).toBe("/tmp/b-no-deb.tgz");
    expect(copyCommand(fleet, "10.0.0.5").args.at(-2)).toBe("/tmp/b.tgz");
    expect(remoteScript(fleet, "10.0.0.5", "without-deb")).not.toContain("dpkg -i");
    expect(remoteScript(fleet, "10.0.0.5")).toContain("dpkg -i");
  });

  it("runSetup: check, copy, install per host, and the connection closed also after a failure", async () => {
    const runner = new (class implements ProcessRunner {
      readonly calls: string[] = [];
      run(command: string, args: readonly string[]): Promise<RunResult> {
        const host = args.at(-1)?.startsWith("sh -c") === true ? (args.at(-2) ?? "") : (args.at(-1) ?? "");
        const key = host.replace(/^.*@/, "").replace(/:.*$/, "");
        const what = args.includes("-O")
          ? "close"
          : command === "scp"
            ? `copy ${args.at(-2) ?? ""}`
            : (args.at(-1) ?? "");
        this.calls.push(
          `${key} ${what.startsWith("sh -c 'dpkg-query") ? "check" : what.startsWith("sh -c") ? "install" : what}`,
        );
        const installed = key === "10.0.0.1" ? "install ok installed\t1.0.0\n" : "";
        const failing = key === "10.0.0.3" && command === "scp";
        return Promise.resolve({
          code: failing ? 1 : 0,
          signal: null,
          stdout: what.startsWith("sh -c 'dpkg-query") ? installed : "",
          stderr: failing ? "scp: disk full\n" : "",
          timedOut: false,
        });
      }
    })();
    const results = await runSetup(
      ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
      { ...fleet, parallel: 1 },
      {
        runner,
        clock: new CountingClock(),
        onUpdate: () => undefined,
      },
    );
    expect(results.map((r) => [r.host, r.ok, r.step, r.package])).toEqual([
      ["10.0.0.1", true, undefined, "present"],
      ["10.0.0.2", true, undefined, "copied"],
      ["10.0.0.3", false, "copy", undefined],
    ]);
    expect(runner.calls).toEqual([
      "10.0.0.1 check",
      "10.0.0.1 copy /tmp/b-no-deb.tgz",
      "10.0.0.1 install",
      "10.0.0.1 close",
      "10.0.0.2 check",
      "10.0.0.2 copy /tmp/b.tgz",
      "10.0.0.2 install",
      "10.0.0.2 close",
      "10.0.0.3 check",
      "10.0.0.3 copy /tmp/b.tgz",
      "10.0.0.3 close",
    ]);
  });
});

describe("scpLostConnection", () => {
  it("treats scp's exit 1 with only 'lost connection' (its SIGPIPE path) as a transport failure, nothing else", () => {
    expect(scpLostConnection(1, "lost connection\n")).toBe(true);
    expect(scpLostConnection(1, "ssh: connect to host 10.0.0.2 port 22: Connection refused\nlost connection\n")).toBe(
      true,
    );
    expect(scpLostConnection(1, "scp: /root/x: Permission denied\n")).toBe(false);
    expect(scpLostConnection(3, "lost connection\n")).toBe(false);
  });
});

describe("progress", () => {
  const status = (host: string, phase: HostStatus["phase"], attempt = 1): HostStatus => ({
    host,
    phase,
    attempt,
    attempts: attempt,
    startedMs: 0,
    endedMs: phase === "done" || phase === "failed" ? 1500 : undefined,
    detail: phase === "failed" ? "Connection refused" : "",
  });
  it("plain lines say what happened to which host", () => {
    expect(renderPlainLine(status("vm1", "done"), 2000)).toBe("vm1: ok after 1.5s");
    expect(renderPlainLine(status("vm2", "failed", 3), 2000)).toBe(
      "vm2: FAILED (attempt 3) after 1.5s: Connection refused",
    );
  });
  it("the live frame has counts and one clipped line per host", () => {
    const frame = renderFrame(
      [status("vm1", "done"), status("vm2", "installing"), status("a-very-long-host-name", "failed")],
      {
        nowMs: 3000,
        tick: 0,
        width: 40,
      },
    );
    expect(frame[0]).toBe("setup: 1 ok, 1 failed, 1 to go (of 3)");
    expect(frame).toHaveLength(4);
    for (const line of frame) expect(line.length).toBeLessThanOrEqual(40);
    expect(frame[1]).toMatch(/^✓ vm1 /);
    expect(frame[3]).toMatch(/^✗ a-very-long-host-name\s+FAILED/);
  });
});
