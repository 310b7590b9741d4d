import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import type { Clock } from "../platform/clock.js";
import type { ProcessRunner, RunResult } from "../platform/process.js";
import { planBundle, renderBundle } from "./bundle.js";
import type { ExistingFile } from "./install-plan.js";
import { mergeEnvSettings } from "./install-plan.js";
import type { InstallPorts } from "./install-system.js";
import { InstallStepError, runInstall } from "./install.js";
import { INSTALL_RECORD_PATH, parseInstallRecord, recordWrites, renderInstallRecord } from "./install-record.js";
import { planUninstall, runUninstall, withoutLoopback } from "./uninstall.js";
import { kubednsDomains, renderResolvedDropin, routingDomains, withLoopbackFirst } from "./resolver.js";
import { passwdFileUsers } from "../platform/users.js";

/** Time that passes only through sleep (instantly). */
class InstantClock implements Clock {
  t = 0;
  now(): number {
    return Date.UTC(2026, 10, 27) + this.t;
  }
  monotonic(): number {
    return this.t;
  }
  sleep(ms: number): Promise<void> {
    this.t += ms;
    return Promise.resolve();
  }
}

/** A Debian VM's dpkg and systemd as far as install sees them; `agentComesUp` decides what a restart leads to. */
class FakeSystem implements ProcessRunner {
  readonly calls: string[] = [];
  installed: string | undefined = "1.0.0";
  agent = "active";
  agentComesUp = true;
  pid = 100;
  run(command: string, args: readonly string[]): Promise<RunResult> {
    const line = [command, ...args].join(" ");
    this.calls.push(line);
    const ok = (stdout = ""): Promise<RunResult> =>
      Promise.resolve({ code: 0, signal: null, stdout, stderr: "", timedOut: false });
    const fail = (code: number, stdout = ""): Promise<RunResult> =>
      Promise.resolve({ code, signal: null, stdout, stderr: "", timedOut: false });
    if (command === "dpkg-query") {
      return this.installed === undefined ? fail(1) : ok(`install ok installed\t${this.installed}`);
    }
    if (command === "dpkg") {
      this.installed = "2.0.0";
      return ok();
    }
    if (command === "journalctl") return ok("agent: boom\n");
    if (command !== "systemctl") return fail(127);
    const [verb, ...rest] = args;
    const unit = rest[rest.length - 1] ?? "";
    if (verb === "is-enabled") return ok("enabled");
    if (verb === "is-active")
      return unit.startsWith("istio-vm-agent")
        ? ok(this.agent)
        : ok(unit.startsWith("dnsmasq") ? "active" : "inactive");
    if (verb === "restart" && unit === "istio-vm-agent.service") {
      this.agent = this.agentComesUp ? "active" : "failed";
      this.pid++;
      return ok();
    }
    if (verb === "show") {
      const running = this.agent === "active";
      return ok(
        `ActiveState=${this.agent}\nSubState=${running ? "running" : "failed"}\nStatusText=${running ? "ready" : "exiting"}\nResult=${running ? "success" : "exit-code"}\nMainPID=${running ? this.pid : 0}\n`,
      );
    }
    return ok();
  }
}

const OLD = {
  "/var/lib/istio/envoy/cluster.env": "ISTIO_CONTROL_PLANE=legacy\nISTIO_SERVICE_CIDR=10.0.0.0/8\n",
  "/var/lib/istio/envoy/sidecar.env": "# conffile\nISTIO_SVC_IP=10.0.0.5\n",
  "/etc/certs/root-cert.pem": "OLD ROOT\n",
  "/etc/certs/cert-chain.pem": "OLD CHAIN\n",
  "/etc/certs/key.pem": "OLD KEY\n",
  "/etc/dnsmasq.d/kubedns": "server=/svc.cluster.local/10.128.0.6\n",
  "/etc/passwd": "root:x:0:0::/root:/bin/sh\nistio-proxy:x:999:999::/var/lib/istio:/usr/sbin/nologin\n",
  "/etc/resolv.conf": "nameserver 192.0.2.53\n",
  "/usr/sbin/dnsmasq": "",
};

function bundleBytes(version: string, profile: "legacy" | "istiod-dns-proxy" = "legacy"): Buffer {
  return renderBundle(
    planBundle({
      profile: profile === "legacy" ? "legacy" : "istiod",
      clusterEnv:
        profile === "legacy"
          ? "ISTIO_CONTROL_PLANE=legacy\nISTIO_SERVICE_CIDR=10.96.0.0/12\n"
          : "ISTIO_CONTROL_PLANE=istiod\nISTIO_SERVICE_CIDR=10.96.0.0/12\nISTIO_META_DNS_CAPTURE=true\n",
      kubedns: "server=/svc.cluster.local/10.128.0.6\naddress=/istio-pilot/10.128.0.8\n",
      credentials: [
        { name: "root-cert.pem", content: "NEW ROOT\n" },
        { name: "cert-chain.pem", content: "NEW CHAIN\n" },
        { name: "key.pem", content: "NEW KEY\n" },
      ],
      settings: [],
      deb: {
        info: {
          file: `istio-vm-agent_${version}_amd64.deb`,
          package: "istio-vm-agent",
          version,
          architecture: "amd64",
        },
        data: Buffer.from("deb"),
      },
      createdBy: "test",
      createdAtMs: 0,
    }),
    { mtimeMs: 0, gzip: true },
  );
}

function world(version: string): { fs: MemoryFileSystem; system: FakeSystem; ports: InstallPorts; progress: string[] } {
  const fs = new MemoryFileSystem(OLD);
  void fs.writeFileAtomic("/root/b.tgz", bundleBytes(version), { mode: 0o600 });
  const system = new FakeSystem();
  const progress: string[] = [];
  return {
    fs,
    system,
    progress,
    ports: {
      fs,
      runner: system,
      clock: new InstantClock(),
      env: {},
      users: passwdFileUsers(fs, "/etc/passwd"),
      isRoot: true,
      progress: (line) => progress.push(line),
    },
  };
}

const options = {
  bundlePath: "/root/b.tgz",
  settings: [],
  resolver: "dhclient" as const,
  readyTimeoutMs: 10_000,
  dryRun: false,
};

describe("install executor", () => {
  it("upgrades the package with dpkg -i --force-confold, writes the files, restarts and waits for READY", async () => {
    const { fs, system, ports } = world("2.0.0");
    const report = await runInstall(options, ports);
    expect(report.steps.find((s) => s.id === "package")?.action).toBe("upgrade");
    expect(system.calls).toContain(
      "dpkg -i --force-confold --force-confdef /var/cache/istio-vm-agent/istio-vm-agent_2.0.0_amd64.deb",
    );
    // The staged .deb is removed after dpkg.
    expect(await fs.exists("/var/cache/istio-vm-agent/istio-vm-agent_2.0.0_amd64.deb")).toBe(false);
    expect(await fs.readText("/etc/certs/key.pem")).toBe("NEW KEY\n");
    expect((await fs.stat("/etc/certs/key.pem"))?.mode).toBe(0o600);
    expect((await fs.stat("/etc/certs/key.pem"))?.uid).toBe(999);
    expect(system.calls).toContain("systemctl restart --no-block istio-vm-agent.service");
    expect(report.unit?.ActiveState).toBe("active");
  });

  it("restores every file and restarts the agent with them when the new agent does not become ready", async () => {
    const { fs, system, ports } = world("1.0.0");
    system.agentComesUp = false;
    const error = await runInstall(options, ports).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(InstallStepError);
    expect((error as InstallStepError).step).toBe("ready");
    expect((error as InstallStepError).message).toMatch(
      /install step 'ready' failed: istio-vm-agent\.service is failed/,
    );
    expect((error as InstallStepError).message).toContain("agent: boom");
    for (const [path, text] of Object.entries(OLD)) expect(await fs.readText(path)).toBe(text);
    // New files that did not exist before are gone again.
    expect(await fs.exists("/etc/dhcp/dhclient-enter-hooks.d/istio-vm")).toBe(false);
    expect(await fs.exists("/etc/dnsmasq.d/istio-vm-local")).toBe(false);
    const restarts = system.calls.filter((c) => c.startsWith("systemctl restart"));
    expect(restarts).toEqual([
      "systemctl restart dnsmasq",
      "systemctl restart --no-block istio-vm-agent.service",
      // rollback: dnsmasq reloads the old kubedns; the agent had been running, so it is restarted on the old files.
      "systemctl restart dnsmasq",
      "systemctl restart istio-vm-agent.service",
    ]);
  });

  it("leaves dnsmasq and the resolver alone on istiod with the DNS proxy, and needs no dnsmasq", async () => {
    const { fs, system, ports } = world("2.0.0");
    await fs.remove("/usr/sbin/dnsmasq");
    await fs.writeFileAtomic("/root/b.tgz", bundleBytes("2.0.0", "istiod-dns-proxy"), { mode: 0o600 });
    const report = await runInstall(options, ports);
    expect(report.steps.find((s) => s.id === "resolver")?.action).toBe("unchanged");
    expect(report.steps.map((s) => s.id)).not.toContain("kubedns");
    // Inspecting (is-active) is read-only; nothing restarts or reconfigures them.
    expect(
      system.calls.filter((c) => (c.includes("dnsmasq") || c.includes("resolved")) && !c.includes("is-active")),
    ).toEqual([]);
    expect(await fs.readText("/etc/resolv.conf")).toBe("nameserver 192.0.2.53\n");
    expect(await fs.readText("/etc/dnsmasq.d/kubedns")).toBe("server=/svc.cluster.local/10.128.0.6\n");
    expect(await fs.exists("/etc/dhcp/dhclient-enter-hooks.d/istio-vm")).toBe(false);
    expect(await fs.readText("/etc/certs/key.pem")).toBe("NEW KEY\n");
    expect(system.calls).toContain("systemctl restart --no-block istio-vm-agent.service");
  });

  it("changes nothing when a dependency is missing: no dnsmasq", async () => {
    const { fs, system, ports } = world("1.0.0");
    await fs.remove("/usr/sbin/dnsmasq");
    await expect(runInstall(options, ports)).rejects.toThrow(/dnsmasq is not installed/);
    expect(system.calls).toEqual([]);
    expect(await fs.readText("/etc/certs/key.pem")).toBe("OLD KEY\n");
  });
});

describe("sidecar.env merge", () => {
  it("replaces assignments in place, keeps comments, appends new keys under one marker, is idempotent", () => {
    const before = "# doc\n#ISTIO_SVC_IP=\nexport ISTIO_INBOUND_PORTS=1\nOTHER=x\n";
    const once = mergeEnvSettings(before, [
      { key: "ISTIO_INBOUND_PORTS", value: "8080" },
      { key: "ISTIO_SVC_IP", value: "10.0.0.5" },
    ]);
    expect(once).toBe(
      "# doc\n#ISTIO_SVC_IP=\nISTIO_INBOUND_PORTS=8080\nOTHER=x\n\n# Set by `istio-vm install` (per-VM settings from the bundle and --set):\nISTIO_SVC_IP=10.0.0.5\n",
    );
    expect(mergeEnvSettings(once, [{ key: "ISTIO_SVC_IP", value: "10.0.0.5" }])).toBe(once);
    expect(mergeEnvSettings(undefined, [{ key: "A_B", value: "it's" }])).toContain("A_B='it'\\''s'");
  });
});

describe("resolver planning", () => {
  const legacy =
    "server=/svc.cluster.local/10.128.0.6\naddress=/istio-pilot/10.128.0.8\naddress=/istio-pilot.istio-system/10.128.0.8\n";
  it("routes the fewest domains that cover kubedns's names", () => {
    expect(kubednsDomains(legacy)).toEqual(["svc.cluster.local", "istio-pilot", "istio-pilot.istio-system"]);
    expect(routingDomains(["istiod", "istiod.istio-system", "istiod.istio-system.svc", "svc.cluster.local"])).toEqual([
      "istio-system",
      "istiod",
      "istio-system.svc",
      "svc.cluster.local",
    ]);
    expect(renderResolvedDropin(legacy)).toContain("Domains=~istio-pilot ~istio-system ~svc.cluster.local\n");
  });
  it("puts 127.0.0.1 first once, keeping every other line", () => {
    expect(withLoopbackFirst("search a\nnameserver 1.1.1.1\noptions x\n")).toBe(
      "search a\nnameserver 127.0.0.1\nnameserver 1.1.1.1\noptions x\n",
    );
    const fixed = withLoopbackFirst("nameserver 1.1.1.1\nnameserver 127.0.0.1\n");
    expect(fixed).toBe("nameserver 127.0.0.1\nnameserver 1.1.1.1\n");
    expect(withLoopbackFirst(fixed)).toBe(fixed);
    expect(withLoopbackFirst("")).toBe("nameserver 127.0.0.1\n");
  });
});

describe("uninstall after install (the record of what install replaced)", () => {
  const snapshot = (fs: MemoryFileSystem): Map<string, string> =>
    new Map(
      [...fs.files.entries()]
        .filter(([path]) => path !== "/root/b.tgz" && !path.startsWith("/etc/certs/") && !path.startsWith("/var/lib/"))
        .map(([path, e]) => [path, `${e.mode.toString(8)} ${String(e.owner?.uid ?? 0)} ${e.data.toString("base64")}`]),
    );

  it("puts every DNS file back byte for byte, removes what install created, restarts dnsmasq", async () => {
    const { fs, system, ports } = world("1.0.0");
    const before = snapshot(fs);
    await runInstall(options, ports);
    expect(await fs.readText("/etc/resolv.conf")).toBe("nameserver 127.0.0.1\nnameserver 192.0.2.53\n");
    expect(await fs.exists("/etc/dhcp/dhclient-enter-hooks.d/istio-vm")).toBe(true);
    expect((await fs.stat(INSTALL_RECORD_PATH))?.mode).toBe(0o600);
    system.calls.length = 0;

    const report = await runUninstall({ dryRun: false }, ports);
    expect(report.failed).toBe(false);
    expect(snapshot(fs)).toEqual(before);
    expect(await fs.exists(INSTALL_RECORD_PATH)).toBe(false);
    expect(report.steps.map((s) => [s.id, s.action])).toEqual([
      ["kubedns", "restore"],
      ["istio-vm-local", "remove"],
      ["istio-vm", "remove"],
      ["resolv.conf", "restore"],
      ["install-record", "remove"],
      ["dnsmasq", "restart"],
    ]);
    expect(system.calls.filter((c) => !c.startsWith("systemctl is-active"))).toEqual(["systemctl restart dnsmasq"]);
    // A second run finds nothing to do.
    const again = await runUninstall({ dryRun: false }, ports);
    expect(again.changed).toBe(false);
    expect(again.steps).toEqual([]);
  });

  it("a second install keeps the original from before the first one", async () => {
    const { fs, ports } = world("1.0.0");
    const before = snapshot(fs);
    await runInstall(options, ports);
    // The admin edits kubedns by hand and installs again: install rewrites it, the record keeps the first original.
    await fs.writeFileAtomic("/etc/dnsmasq.d/kubedns", "server=/svc.cluster.local/10.9.9.9\n", { mode: 0o644 });
    await fs.writeFileAtomic("/etc/resolv.conf", "nameserver 192.0.2.53\n", { mode: 0o644 });
    const second = await runInstall(options, ports);
    // Install wrote the same content again: same digests, so the record's bytes do not change.
    expect(second.steps.find((s) => s.id === "kubedns")?.action).toBe("update");
    expect(second.steps.find((s) => s.id === "install-record")?.action).toBe("unchanged");
    await runUninstall({ dryRun: false }, ports);
    expect(snapshot(fs)).toEqual(before);
  });

  it("a resolv.conf rewritten by a lease event since install loses only the 127.0.0.1 line install added", async () => {
    const { fs, ports } = world("1.0.0");
    await runInstall(options, ports);
    // dhclient-script with the hook, on a renewal with new servers.
    await fs.writeFileAtomic(
      "/etc/resolv.conf",
      "domain example.internal\nsearch example.internal\nnameserver 127.0.0.1\nnameserver 192.0.2.60\n",
      { mode: 0o644 },
    );
    const report = await runUninstall({ dryRun: false }, ports);
    expect(report.steps.find((s) => s.id === "resolv.conf")?.action).toBe("edit");
    expect(await fs.readText("/etc/resolv.conf")).toBe(
      "domain example.internal\nsearch example.internal\nnameserver 192.0.2.60\n",
    );
  });

  it("keeps and names a file the admin changed after install; the dry run changes nothing", async () => {
    const { fs, ports } = world("1.0.0");
    await runInstall(options, ports);
    await fs.writeFileAtomic("/etc/dnsmasq.d/kubedns", "server=/svc.cluster.local/10.9.9.9\n", { mode: 0o644 });
    const dry = await runUninstall({ dryRun: true }, ports);
    expect(dry.steps.find((s) => s.id === "kubedns")?.action).toBe("keep");
    expect(await fs.exists(INSTALL_RECORD_PATH)).toBe(true);
    expect(await fs.exists("/etc/dhcp/dhclient-enter-hooks.d/istio-vm")).toBe(true);
    const report = await runUninstall({ dryRun: false }, ports);
    expect(report.notes.join("\n")).toContain("/etc/dnsmasq.d/kubedns was changed after install");
    expect(await fs.readText("/etc/dnsmasq.d/kubedns")).toBe("server=/svc.cluster.local/10.9.9.9\n");
  });

  it("without a record removes install's own files and says that resolv.conf is left alone", async () => {
    const { fs, ports } = world("1.0.0");
    await runInstall(options, ports);
    await fs.remove(INSTALL_RECORD_PATH);
    const report = await runUninstall({ dryRun: false }, ports);
    expect(report.recorded).toBe(false);
    expect(await fs.exists("/etc/dhcp/dhclient-enter-hooks.d/istio-vm")).toBe(false);
    expect(await fs.exists("/etc/dnsmasq.d/istio-vm-local")).toBe(false);
    expect(await fs.readText("/etc/resolv.conf")).toBe("nameserver 127.0.0.1\nnameserver 192.0.2.53\n");
    expect(report.notes.join("\n")).toMatch(/no install record .*nameserver 127\.0\.0\.1/);
  });

  it("refuses a damaged record instead of guessing, naming the file", async () => {
    const { fs, ports } = world("1.0.0");
    await fs.writeFileAtomic(INSTALL_RECORD_PATH, '{"kind":"istio-vm-install-record","version":1,"files":[{}]}', {
      mode: 0o600,
    });
    await expect(runUninstall({ dryRun: false }, ports)).rejects.toThrow(
      /install-record\.json is not a valid install record: files\[0\]\.path/,
    );
  });
});

describe("uninstall planning (resolved)", () => {
  it("removes the drop-in and restarts systemd-resolved and dnsmasq", () => {
    const paths = {
      dnsmasqDir: "/etc/dnsmasq.d",
      resolvedConfDir: "/etc/systemd/resolved.conf.d",
      resolvConf: "/etc/resolv.conf",
      dhclientHooksDir: "/etc/dhcp/dhclient-enter-hooks.d",
      installRecord: INSTALL_RECORD_PATH,
    };
    const dropin = Buffer.from("[Resolve]\nDNS=127.0.0.1\n");
    const local = Buffer.from("bind-interfaces\n");
    const record = recordWrites(undefined, [
      { path: "/etc/dnsmasq.d/istio-vm-local", content: local, previous: undefined },
      { path: "/etc/systemd/resolved.conf.d/istio-vm.conf", content: dropin, previous: undefined },
    ]);
    const file = (content: Buffer): ExistingFile => ({ content, mode: 0o644, uid: 0, gid: 0 });
    const plan = planUninstall(
      {
        relocated: false,
        record,
        recordPath: INSTALL_RECORD_PATH,
        files: new Map([
          ["/etc/dnsmasq.d/istio-vm-local", file(local)],
          ["/etc/systemd/resolved.conf.d/istio-vm.conf", file(dropin)],
          ["/etc/resolv.conf", file(Buffer.from("nameserver 127.0.0.53\n"))],
        ]),
        dnsmasqActive: true,
        resolvedActive: true,
      },
      paths,
    );
    expect(plan.steps.map((s) => [s.id, s.action])).toEqual([
      ["istio-vm-local", "remove"],
      ["istio-vm.conf", "remove"],
      ["install-record", "remove"],
      ["dnsmasq", "restart"],
      ["systemd-resolved", "restart"],
    ]);
    expect(parseInstallRecord(renderInstallRecord(record), "r")).toEqual(record);
  });

  it("withoutLoopback drops only nameserver 127.0.0.1 lines", () => {
    expect(withoutLoopback("search a\nnameserver 127.0.0.1\nnameserver 10.0.0.2\n")).toBe(
      "search a\nnameserver 10.0.0.2\n",
    );
    expect(withoutLoopback("nameserver 127.0.0.1\n")).toBe("");
  });
});
