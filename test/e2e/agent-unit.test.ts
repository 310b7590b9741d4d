/**
 * The path a user takes, on a booted Debian 12 with systemd as PID 1: dpkg -i, configure, systemctl start / status /
 * reload / stop, dpkg --purge; and a broken sidecar.env that must leave the unit `failed` with the reason in the
 * journal. Each case boots its own machine (test/e2e/debian-harness.ts) and disposes of it even on failure.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { requirements } from "../support/requirements.js";
import type { DebianMachine } from "./debian-harness.js";
import { HARNESS_TOOLS, bootDebian } from "./debian-harness.js";
import { ensureDeb } from "./deb-package.js";

const missing = requirements({ root: true, tools: [...HARNESS_TOOLS, "dpkg-deb"] });

const UNIT = "istio-vm-agent.service";
const DEB_INSIDE = "/root/istio-vm-agent.deb";

const CLUSTER_ENV = [
  "# written by the end-to-end test, as `istio-vm cluster-env` would",
  "ISTIO_CONTROL_PLANE=istiod",
  "ISTIO_SYSTEM_NAMESPACE=istio-system",
  "ISTIO_SERVICE_CIDR=10.96.0.0/12",
  "",
].join("\n");
/**
 * No Envoy in the image (none can be installed here), so the agent runs without its Envoy component; the
 * interception component runs for real, as istio-proxy with the unit's two capabilities, inside the container's
 * own network namespace.
 */
const SIDECAR_ENV = [
  "ISTIO_SVC_IP=10.0.0.5",
  "ISTIO_INBOUND_PORTS=8080",
  "ISTIO_AGENT_COMPONENTS=interception",
  "",
].join("\n");

/**
 * Every path on the machine, minus what the system itself changes while a package comes and goes (dpkg's database
 * and logs, the journal, the shadow tools' backups of /etc/passwd and friends), so that purge can be compared
 * with the state before install.
 */
const LISTING = [
  "find / -xdev",
  "\\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp -o -path /var/tmp",
  "-o -path /var/lib/dpkg -o -path /var/log/journal -o -path /var/cache/debconf \\) -prune -o",
  "\\! -path /var/log/dpkg.log \\! -path /etc/passwd- \\! -path /etc/group- \\! -path /etc/shadow- \\! -path /etc/gshadow-",
  "\\! -path /var/lib/systemd/random-seed \\! -path '/var/lib/systemd/timers/*'",
  "-printf '%p %M %u:%g\\n'",
  "| LC_ALL=C sort",
].join(" ");

async function writeInside(vm: DebianMachine, path: string, content: string): Promise<void> {
  await vm.check(["sh", "-c", `cat > '${path}'`], { input: content });
}

/** Kept on failure, for the report: what the unit and the agent said. */
async function diagnostics(vm: DebianMachine | undefined): Promise<string> {
  if (vm === undefined) return "";
  const status = await vm.run(["systemctl", "status", "--no-pager", "--lines=0", UNIT]);
  const journal = await vm.journal(UNIT).catch((e: unknown) => String(e));
  return `${status.stdout}\n--- journal of ${UNIT}\n${journal}`;
}

describe.skipIf(missing !== undefined)("istio-vm-agent.service on a booted Debian 12", () => {
  describe("install, start, status, health, reload, stop, purge", () => {
    let vm: DebianMachine | undefined;
    let before = "";

    beforeAll(async () => {
      const deb = ensureDeb();
      vm = await bootDebian({ name: "agent" });
      before = await vm.check(["sh", "-c", LISTING]);
      await vm.copyIn(deb, DEB_INSIDE);
    });

    afterAll(async () => {
      await vm?.dispose();
    });

    const machine = (): DebianMachine => {
      if (vm === undefined) throw new Error("the machine did not boot");
      return vm;
    };

    it("installs with dpkg -i: user, directories, link, enabled unit that waits for cluster.env", async () => {
      const m = machine();
      const install = await m.run(["dpkg", "-i", DEB_INSIDE]);
      expect(install.code, install.stdout + install.stderr).toBe(0);
      expect(install.stderr).not.toMatch(/warning|error/i);

      expect(await m.check(["getent", "passwd", "istio-proxy"])).toMatch(
        /^istio-proxy:x:\d+:\d+:[^:]*:\/var\/lib\/istio:/,
      );
      const stat = await m.check([
        "stat",
        "-c",
        "%n %U:%G %a",
        "/var/lib/istio",
        "/var/lib/istio/envoy",
        "/var/lib/istio/envoy/sidecar.env",
        "/var/lib/istio/proxy",
        "/etc/certs",
        "/var/log/istio",
        "/usr/bin/istio-vm",
      ]);
      expect(stat.trim().split("\n")).toEqual([
        "/var/lib/istio istio-proxy:istio-proxy 755",
        "/var/lib/istio/envoy root:root 755",
        "/var/lib/istio/envoy/sidecar.env root:root 644",
        "/var/lib/istio/proxy istio-proxy:istio-proxy 700",
        "/etc/certs istio-proxy:istio-proxy 755",
        "/var/log/istio istio-proxy:istio-proxy 755",
        "/usr/bin/istio-vm root:root 755",
      ]);
      expect((await m.check(["readlink", "/etc/istio"])).trim()).toBe("/var/lib/istio");
      expect((await m.check(["systemctl", "is-enabled", UNIT])).trim()).toBe("enabled");
      // The recipe's names reach the same unit.
      const alias = await m.unitProperties("istio.service", ["Id"]);
      expect(alias["Id"]).toBe(UNIT);
      const oldAgent = await m.unitProperties("istio-auth-node-agent.service", ["Id"]);
      expect(oldAgent["Id"]).toBe(UNIT);
      // postinst started it; without cluster.env the condition skips it instead of failing.
      const props = await m.unitProperties(UNIT, ["ActiveState", "ConditionResult"]);
      expect(props).toEqual({ ActiveState: "inactive", ConditionResult: "no" });
      // The program runs without any Node.js on the machine.
      expect((await m.run(["sh", "-c", "command -v node nodejs"])).stdout).toBe("");
      expect((await m.check(["istio-vm", "--version"])).trim()).toMatch(/^\d+\.\d+\.\d+/);
    });

    it("passes systemd-analyze verify inside the machine, with nothing on stderr", async () => {
      const result = await machine().run(["systemd-analyze", "verify", "--man=no", UNIT]);
      expect(result.stderr).toBe("");
      expect(result.code).toBe(0);
    });

    it("lets iptables-restore work in the unit's sandbox, and only because of its ambient capabilities", async () => {
      const m = machine();
      // Every sandbox setting of the installed unit, passed to a transient unit that runs iptables-restore.
      const unitText = await m.check(["cat", `/lib/systemd/system/${UNIT}`]);
      const service = unitText.slice(unitText.indexOf("[Service]"), unitText.indexOf("[Install]"));
      const notSandbox =
        /^(Type|NotifyAccess|ExecStart|ExecReload|ExecStopPost|WatchdogSec|Restart|RestartSec|RestartPreventExitStatus|KillMode|TimeoutStopSec)=/;
      const sandbox = service
        .split("\n")
        .filter((l) => /^[A-Z][A-Za-z]+=/.test(l) && !notSandbox.test(l))
        .flatMap((l) => ["-p", l]);
      expect(sandbox).toContain("AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW");
      const rules = "*nat\n:ISTIO_E2E_PROBE - [0:0]\n-A ISTIO_E2E_PROBE -p tcp --dport 9 -j RETURN\nCOMMIT\n";
      const restore = (properties: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> =>
        m.run(["systemd-run", "--wait", "--pipe", "--quiet", ...properties, "iptables-restore", "--noflush"], {
          input: rules,
        });

      const withoutCaps = await restore([
        ...sandbox.filter((p) => !p.startsWith("AmbientCapabilities=")),
        "-p",
        "AmbientCapabilities=",
      ]);
      expect(withoutCaps.code, "iptables-restore must fail without the ambient capabilities").not.toBe(0);

      const withCaps = await restore(sandbox);
      expect(withCaps.code, withCaps.stderr).toBe(0);
      expect(await m.check(["iptables", "-t", "nat", "-S", "ISTIO_E2E_PROBE"])).toContain("--dport 9 -j RETURN");
      await m.check(["iptables", "-t", "nat", "-F", "ISTIO_E2E_PROBE"]);
      await m.check(["iptables", "-t", "nat", "-X", "ISTIO_E2E_PROBE"]);

      // Writable: the agent's state, certificates, logs, runtime dir and Envoy's hot-restart shared memory.
      // Not writable: the rest of the system, and the configuration directory (root's).
      const probe =
        "for d in /dev/shm /run/istio-vm /var/lib/istio /var/lib/istio/proxy /etc/istio/proxy /etc/certs /var/log/istio; do " +
        "touch $d/.probe && rm $d/.probe || echo cannot-write:$d; done; " +
        "for d in /etc /usr /var/lib/istio/envoy /root /home /var/tmp/..; do " +
        "touch $d/.probe 2>/dev/null && { rm -f $d/.probe; echo wrote:$d; }; done; true";
      const writes = await m.run(["systemd-run", "--wait", "--pipe", "--quiet", ...sandbox, "sh", "-c", probe]);
      expect(writes.stdout + writes.stderr).toBe("");
      expect(writes.code).toBe(0);
    });

    it("starts: active, running, a STATUS= line, ready on 127.0.0.1:15020, as istio-proxy with two capabilities", async () => {
      const m = machine();
      await writeInside(m, "/var/lib/istio/envoy/cluster.env", CLUSTER_ENV);
      await writeInside(m, "/var/lib/istio/envoy/sidecar.env", SIDECAR_ENV);
      const start = await m.run(["systemctl", "start", UNIT]);
      expect(start.code, `${start.stderr}\n${await diagnostics(m)}`).toBe(0);

      const props = await m.unitProperties(UNIT, ["ActiveState", "SubState", "StatusText", "MainPID"]);
      expect(props["ActiveState"]).toBe("active");
      expect(props["SubState"]).toBe("running");
      expect(props["StatusText"]).not.toBe("");

      // READY=1 comes before the components start (systemd's start never waits on the network): readiness is
      // awaited the way scripts do, with `istio-vm check --wait`.
      const waited = await m.run(["istio-vm", "check", "--only", "interception", "--wait=30s"]);
      expect(waited.code, `${waited.stdout}\n${waited.stderr}`).toBe(0);
      // Compared once the components run: until then STATUS= changes as each starts, so a StatusText read just
      // before `systemctl status` may already be stale (CI saw "waiting for traffic capture…" vs "ready…").
      const settled = await m.unitProperties(UNIT, ["StatusText"]);
      expect(settled["StatusText"]).toMatch(/^ready: /);
      const status = await m.run(["systemctl", "status", "--no-pager", UNIT]);
      expect(status.stdout).toContain(`Status: "${settled["StatusText"] ?? ""}"`);
      const health = await m.check([
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://127.0.0.1:15020/healthz/ready",
      ]);
      expect(health).toBe("200");
      const metrics = await m.check(["curl", "-fsS", "http://127.0.0.1:15020/metrics"]);
      expect(metrics).toMatch(/^# TYPE /m);

      const procStatus = await m.check(["cat", `/proc/${props["MainPID"] ?? "0"}/status`]);
      const uid = (await m.check(["id", "-u", "istio-proxy"])).trim();
      expect(procStatus).toMatch(new RegExp(`^Uid:\\s+${uid}\\s+${uid}\\s+${uid}\\s+${uid}$`, "m"));
      // CAP_NET_ADMIN (12) and CAP_NET_RAW (13): 0x3000, and nothing else even in the bounding set.
      expect(procStatus).toMatch(/^CapAmb:\s+0000000000003000$/m);
      expect(procStatus).toMatch(/^CapEff:\s+0000000000003000$/m);
      expect(procStatus).toMatch(/^CapBnd:\s+0000000000003000$/m);
      expect(procStatus).toMatch(/^NoNewPrivs:\s+1$/m);

      // The agent (not root) applied the capture of inbound port 8080.
      const nat = await m.check(["iptables-save", "-t", "nat"]);
      expect(nat).toMatch(/--dport 8080 /);
    });

    it("reloads on systemctl reload: RELOADING…READY, same process, the agent logs it", async () => {
      const m = machine();
      const before = await m.unitProperties(UNIT, ["MainPID"]);
      const reload = await m.run(["systemctl", "reload", UNIT]);
      expect(reload.code, reload.stderr).toBe(0);
      let journal = "";
      for (let i = 0; i < 100 && !journal.includes("configuration reloaded"); i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        journal = await m.journal(UNIT);
      }
      expect(journal).toContain("reloading configuration (SIGHUP)");
      expect(journal).toContain("configuration reloaded");
      let props = await m.unitProperties(UNIT, ["ActiveState", "SubState", "MainPID"]);
      for (let i = 0; i < 50 && props["ActiveState"] !== "active"; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        props = await m.unitProperties(UNIT, ["ActiveState", "SubState", "MainPID"]);
      }
      expect(props).toEqual({ ActiveState: "active", SubState: "running", MainPID: before["MainPID"] });
    });

    it("reinstalls over itself: the edited sidecar.env is kept and the running agent is restarted", async () => {
      const m = machine();
      const before = await m.unitProperties(UNIT, ["MainPID"]);
      const again = await m.run(["dpkg", "-i", DEB_INSIDE], { env: { DEBIAN_FRONTEND: "noninteractive" } });
      expect(again.code, again.stdout + again.stderr).toBe(0);
      expect(await m.check(["cat", "/var/lib/istio/envoy/sidecar.env"])).toBe(SIDECAR_ENV);
      const props = await m.unitProperties(UNIT, ["ActiveState", "SubState", "MainPID"]);
      expect(props["ActiveState"]).toBe("active");
      expect(props["SubState"]).toBe("running");
      expect(props["MainPID"]).not.toBe(before["MainPID"]);
    });

    it("stops cleanly: inactive, exit 0, the clean-up ran, no process of the unit or of istio-proxy left", async () => {
      const m = machine();
      const stop = await m.run(["systemctl", "stop", UNIT]);
      expect(stop.code, stop.stderr).toBe(0);
      const props = await m.unitProperties(UNIT, ["ActiveState", "Result", "ExecMainStatus", "MainPID"]);
      expect(props).toEqual({ ActiveState: "inactive", Result: "success", ExecMainStatus: "0", MainPID: "0" });
      const leftovers = await m.check([
        "sh",
        "-c",
        'for p in /proc/[0-9]*; do u=$(stat -c %U $p 2>/dev/null) && [ "$u" = istio-proxy ] && echo $p; ' +
          'e=$(readlink $p/exe 2>/dev/null) && [ "$e" = /usr/bin/istio-vm ] && echo $p; done; true',
      ]);
      expect(leftovers).toBe("");
      // Stopped means no capture: nothing of the agent's is left in the nat table.
      const nat = await m.check(["iptables-save", "-t", "nat"]);
      expect(nat).not.toMatch(/--dport 8080 /);
      const journal = await m.journal(UNIT);
      expect(journal).toContain("agent stopped");
    });

    it("purges: no file, no user, no group, no unit left behind", async () => {
      const m = machine();
      const purge = await m.run(["dpkg", "--purge", "istio-vm-agent"]);
      expect(purge.code, purge.stdout + purge.stderr).toBe(0);
      await m.check(["rm", DEB_INSIDE]);
      const after = await m.check(["sh", "-c", LISTING]);
      expect(after).toBe(before);
      expect((await m.run(["getent", "passwd", "istio-proxy"])).code).toBe(2);
      expect((await m.run(["getent", "group", "istio-proxy"])).code).toBe(2);
      // No unit file by any of its names (list-unit-files exits 1 when nothing matches).
      expect((await m.run(["systemctl", "list-unit-files", "--no-legend", "istio*"])).stdout.trim()).toBe("");
    });
  });

  describe("a broken sidecar.env", () => {
    let vm: DebianMachine | undefined;

    beforeAll(async () => {
      const deb = ensureDeb();
      vm = await bootDebian({ name: "broken" });
      await vm.copyIn(deb, DEB_INSIDE);
      await vm.check(["dpkg", "-i", DEB_INSIDE]);
    });

    afterAll(async () => {
      await vm?.dispose();
    });

    it("fails the start; the unit is failed (no restart loop) and the validation message is in the journal", async () => {
      const m = vm;
      if (m === undefined) throw new Error("the machine did not boot");
      await writeInside(m, "/var/lib/istio/envoy/cluster.env", CLUSTER_ENV);
      await writeInside(m, "/var/lib/istio/envoy/sidecar.env", "ISTIO_SVC_IP=10.0.0.5\nISTIO_INBOUND_PORTS=70000\n");
      const start = await m.run(["systemctl", "start", UNIT]);
      expect(start.code).not.toBe(0);
      const props = await m.unitProperties(UNIT, ["ActiveState", "Result", "ExecMainStatus", "NRestarts"]);
      expect(props).toEqual({ ActiveState: "failed", Result: "exit-code", ExecMainStatus: "2", NRestarts: "0" });
      const journal = await m.journal(UNIT);
      expect(journal).toMatch(/invalid configuration: .*sidecar\.env:2: ISTIO_INBOUND_PORTS: .*70000/);
    });
  });
});
