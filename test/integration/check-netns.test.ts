/**
 * `istio-vm check` against the dev control plane, over real networks: a "cluster" network namespace runs
 * `istio-vm dev` (Kubernetes API, kube-dns on :53, Pilot v1 REST on :8080, ADS on :15010/:15011, the CA on :8060, all
 * on the load-balancer addresses `istio-vm dnsmasq` reads), and a "VM" namespace runs real dnsmasq loaded with the
 * generated `kubedns`, its resolv.conf pointing at 127.0.0.1 (ip netns exec bind-mounts /etc/netns/<vm>/resolv.conf).
 * Both namespaces and the veth between them are made here and removed afterwards, also on failure; nothing is
 * changed in the machine's own namespace.
 */
import type { ChildProcess } from "node:child_process";
import { execFile, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CLI } from "../support/cli.js";
import { requirements } from "../support/requirements.js";

const missing = requirements({ root: true, tools: ["ip", "dnsmasq", "host", "getent"] });

interface CheckJson {
  ok: boolean;
  checks: {
    name: string;
    ok: boolean;
    status: string;
    summary: string;
    details: string[];
    hint?: string;
    data?: unknown;
  }[];
}

interface NameData {
  name: string;
  system: { ok: boolean; addresses?: string[]; code?: string };
  direct: { ok: boolean; addresses?: string[]; code?: string };
  kubedns?: string;
}

const id = randomBytes(3).toString("hex");
const CLUSTER_NS = `dnsv-c-${id}`;
const VM_NS = `dnsv-v-${id}`;
const SUBNET = `10.251.${(parseInt(id.slice(0, 2), 16) % 250) + 1}`;
const CLUSTER_IP = `${SUBNET}.1`;
const VM_IP = `${SUBNET}.2`;
/** The dev plane gives the legacy load balancers consecutive addresses from --lb-ip: dns, mixer, pilot, ca. */
const LB_BASE = 6;

function run(command: string, args: readonly string[]): string {
  return execFileSync(command, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function tryRun(command: string, args: readonly string[]): void {
  try {
    run(command, args);
  } catch {
    // cleanup: best effort
  }
}

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runIn(ns: string, command: string, args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<Result> {
  return new Promise((resolve) => {
    execFile(
      "ip",
      ["netns", "exec", ns, command, ...args],
      { env: { PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin", ...env }, timeout: 90_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : null;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

describe.skipIf(missing !== undefined)(
  "istio-vm check in a VM namespace against istio-vm dev in a cluster namespace",
  () => {
    const dir = mkdtempSync(join(tmpdir(), "istio-vm-check-"));
    const dnsmasqDir = join(dir, "dnsmasq.d");
    const certsDir = join(dir, "certs");
    const kubeconfig = join(dir, "kubeconfig");
    const vmEtc = `/etc/netns/${VM_NS}`;
    let dev: ChildProcess | undefined;
    let dnsmasq: ChildProcess | undefined;
    let kubednsText = "";

    const vmEnv = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
      ISTIO_VM_ROOT: join(dir, "vm"),
      ISTIO_CONTROL_PLANE: "legacy",
      ISTIO_DNSMASQ_DIR: dnsmasqDir,
      ISTIO_RESOLV_CONF: "/etc/resolv.conf",
      OUTPUT_CERTS: certsDir,
      ISTIO_SVC_IP: VM_IP,
      ...extra,
    });

    const check = async (
      args: readonly string[],
      extra: NodeJS.ProcessEnv = {},
    ): Promise<{ code: number | null; json: CheckJson }> => {
      const result = await runIn(VM_NS, process.execPath, [CLI, "check", "--json", ...args], vmEnv(extra));
      let json: CheckJson;
      try {
        json = JSON.parse(result.stdout) as CheckJson;
      } catch {
        throw new Error(`check printed no JSON (exit ${String(result.code)}): ${result.stdout}\n${result.stderr}`);
      }
      return { code: result.code, json };
    };

    const startDnsmasq = async (waitUntilAnswering = true): Promise<void> => {
      dnsmasq = spawn(
        "ip",
        [
          "netns",
          "exec",
          VM_NS,
          "dnsmasq",
          "--keep-in-foreground",
          "--no-resolv",
          "--no-hosts",
          "--no-dhcp-interface=",
          "--listen-address=127.0.0.1",
          "--bind-interfaces",
          "--port=53",
          "--user=root",
          `--pid-file=${join(dir, "dnsmasq.pid")}`,
          `--conf-dir=${dnsmasqDir}`,
          "--log-facility=-",
        ],
        { stdio: "ignore" },
      );
      if (!waitUntilAnswering) return;
      // Ready when it answers.
      for (let i = 0; i < 50; i++) {
        const r = await runIn(VM_NS, "host", ["-W", "1", "-t", "A", "istio-pilot", "127.0.0.1"]);
        if (r.code === 0) return;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      throw new Error("dnsmasq did not start answering");
    };

    const stopDnsmasq = async (): Promise<void> => {
      const child = dnsmasq;
      dnsmasq = undefined;
      if (child?.pid === undefined || child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
    };

    const setPilotFault = async (faults: string): Promise<void> => {
      // From the cluster's own loopback: the dev plane's fault switches refuse other callers.
      const script = `fetch("http://127.0.0.1:8080/istio-vm-dev/fault",{method:"POST",body:${JSON.stringify(faults)}}).then(async r=>{process.stdout.write(await r.text());process.exit(r.ok?0:1)})`;
      const r = await runIn(CLUSTER_NS, process.execPath, ["-e", script]);
      expect(r.code, r.stdout + r.stderr).toBe(0);
    };

    beforeAll(async () => {
      try {
        run("ip", ["netns", "add", CLUSTER_NS]);
        run("ip", ["netns", "add", VM_NS]);
        run("ip", ["link", "add", `vc${id}`, "type", "veth", "peer", "name", `vv${id}`]);
        run("ip", ["link", "set", `vc${id}`, "netns", CLUSTER_NS]);
        run("ip", ["link", "set", `vv${id}`, "netns", VM_NS]);
        run("ip", ["-n", CLUSTER_NS, "addr", "add", `${CLUSTER_IP}/24`, "dev", `vc${id}`]);
        for (let i = 0; i < 4; i++) {
          run("ip", ["-n", CLUSTER_NS, "addr", "add", `${SUBNET}.${LB_BASE + i}/24`, "dev", `vc${id}`]);
        }
        run("ip", ["-n", VM_NS, "addr", "add", `${VM_IP}/24`, "dev", `vv${id}`]);
        for (const [ns, dev] of [
          [CLUSTER_NS, `vc${id}`],
          [VM_NS, `vv${id}`],
        ] as const) {
          run("ip", ["-n", ns, "link", "set", "lo", "up"]);
          run("ip", ["-n", ns, "link", "set", dev, "up"]);
        }
        mkdirSync(vmEtc, { recursive: true });
        writeFileSync(join(vmEtc, "resolv.conf"), "nameserver 127.0.0.1\n");
        mkdirSync(dnsmasqDir, { recursive: true });

        dev = spawn(
          "ip",
          [
            "netns",
            "exec",
            CLUSTER_NS,
            process.execPath,
            CLI,
            "dev",
            "--profile",
            "legacy",
            "--listen",
            "0.0.0.0",
            "--lb-ip",
            `${SUBNET}.${LB_BASE}`,
            "--lb-delay",
            "0s",
            "--service-port",
            "kube-dns=53",
            "--service-port",
            "pilot-http=8080",
            "--service-port",
            "ca=8060",
            "--service-port",
            "pilot-grpc=15010",
            "--service-port",
            "pilot-grpc-tls=15011",
            "--write-kubeconfig",
            kubeconfig,
            "--json",
          ],
          { stdio: ["ignore", "pipe", "pipe"] },
        );
        let stderr = "";
        dev.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
        await new Promise<void>((resolve, reject) => {
          let out = "";
          const timer = setTimeout(() => {
            reject(new Error(`istio-vm dev did not get ready: ${out}\n${stderr}`));
          }, 90_000);
          dev?.stdout?.on("data", (d: Buffer) => {
            out += d.toString();
            if (out.includes('"ready":true')) {
              clearTimeout(timer);
              resolve();
            }
          });
          dev?.once("exit", (code) => {
            clearTimeout(timer);
            reject(new Error(`istio-vm dev exited ${String(code)}: ${stderr}`));
          });
        });

        // The admin side, as the recipe: kubedns and the bootstrap certificates from the cluster.
        const env = { KUBECONFIG: kubeconfig };
        const gen = await runIn(
          CLUSTER_NS,
          process.execPath,
          [CLI, "dnsmasq", "--wait", "30s", "--poll-interval", "1s"],
          env,
        );
        expect(gen.code, gen.stderr).toBe(0);
        kubednsText = gen.stdout;
        writeFileSync(join(dnsmasqDir, "kubedns"), kubednsText);
        const certs = await runIn(
          CLUSTER_NS,
          process.execPath,
          [CLI, "certs", "default", "default", "--all", "-o", certsDir],
          env,
        );
        expect(certs.code, certs.stderr).toBe(0);
        await startDnsmasq();
      } catch (error) {
        await cleanup();
        throw error;
      }
    }, 180_000);

    async function cleanup(): Promise<void> {
      await stopDnsmasq();
      if (dev?.pid !== undefined && dev.exitCode === null) {
        const exited = new Promise((resolve) => dev?.once("exit", resolve));
        dev.kill("SIGTERM");
        await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 10_000))]);
        if ((dev.exitCode as number | null) === null) dev.kill("SIGKILL");
      }
      tryRun("ip", ["netns", "del", VM_NS]);
      tryRun("ip", ["netns", "del", CLUSTER_NS]);
      rmSync(vmEtc, { recursive: true, force: true });
      rmSync(dir, { recursive: true, force: true });
    }

    afterAll(cleanup, 60_000);

    it("the generated kubedns is the legacy format with the load-balancer addresses", () => {
      expect(kubednsText).toBe(
        [
          `server=/svc.cluster.local/${SUBNET}.${LB_BASE}`,
          `address=/istio-mixer/${SUBNET}.${LB_BASE + 1}`,
          `address=/istio-pilot/${SUBNET}.${LB_BASE + 2}`,
          `address=/istio-ca/${SUBNET}.${LB_BASE + 3}`,
          `address=/istio-mixer.istio-system/${SUBNET}.${LB_BASE + 1}`,
          `address=/istio-pilot.istio-system/${SUBNET}.${LB_BASE + 2}`,
          `address=/istio-ca.istio-system/${SUBNET}.${LB_BASE + 3}`,
          "",
        ].join("\n"),
      );
    });

    it("passes dns, discovery and ca, and agrees with getent and host", async () => {
      const { code, json } = await check(["--only", "dns,discovery,ca"]);
      expect(json.checks.map((c) => [c.name, c.status])).toEqual([
        ["dns", "pass"],
        ["discovery", "pass"],
        ["ca", "pass"],
      ]);
      expect(code).toBe(0);
      const names = (json.checks[0]?.data as { names: NameData[] }).names;
      expect(names.map((n) => n.name)).toEqual([
        "istio-pilot",
        "istio-mixer",
        "istio-ca",
        "istio-pilot.istio-system",
        "istio-mixer.istio-system",
        "istio-ca.istio-system",
        "kubernetes.default.svc.cluster.local",
      ]);
      for (const n of names) {
        const getent = await runIn(VM_NS, "getent", ["ahostsv4", n.name]);
        const getentAddresses = [
          ...new Set(
            getent.stdout
              .split("\n")
              .map((l) => l.split(/\s+/)[0])
              .filter((a) => a !== undefined && a !== ""),
          ),
        ];
        expect(n.system.addresses, n.name).toEqual(getentAddresses);
        const host = await runIn(VM_NS, "host", ["-t", "A", n.name]);
        const hostAddresses = [...host.stdout.matchAll(/has address (\S+)/g)].map((m) => m[1]);
        expect(n.direct.addresses, n.name).toEqual(hostAddresses);
      }
      // The cluster name came from the dev kube-dns through dnsmasq's server= line: the kubernetes Service's IP.
      const kubernetes = names.find((n) => n.name === "kubernetes.default.svc.cluster.local");
      expect(kubernetes?.direct.addresses).toEqual(["10.96.0.1"]);
      // ENVOY_XDS_API=v1 (the legacy default): this node's CDS and LDS from Pilot's v1 API.
      expect(json.checks[1]?.summary).toMatch(/^pilot ok \(v1: \d+ clusters, \d+ listeners\)$/);
      // ENVOY_XDS_API=v2 (Istio 0.8): CDS then LDS over ADS v2 on 15011, mTLS to Pilot's SPIFFE id.
      const adsV2 = await check(["--only", "discovery"], { ENVOY_XDS_API: "v2" });
      expect(adsV2.json.checks[0]?.summary).toMatch(/^pilot ok \(v2 ADS: \d+ clusters, \d+ listeners, ACKed\)$/);
      expect(adsV2.json.checks[0]?.details).toContain(
        "ADS v2 mTLS (server SAN spiffe://cluster.local/ns/istio-system/sa/istio-pilot-service-account) to istio-pilot.istio-system:15011",
      );
      const v2 = await check(["--only", "discovery"], { ENVOY_XDS_API: "v3" });
      expect(v2.json.checks[0]?.summary).toMatch(
        /^pilot ok \(1 host for istio-pilot\.istio-system\.svc\.cluster\.local\|http-discovery\)$/,
      );
      expect(json.checks[2]?.summary).toContain("is istio-ca, chain ok");
    });

    it("prints a table for people and exits 1 when a check fails (envoy is not running)", async () => {
      const r = await runIn(VM_NS, process.execPath, [CLI, "check", "--only", "dns", "--only", "envoy"], vmEnv());
      expect(r.code).toBe(1);
      const lines = r.stdout.split("\n");
      expect(lines[0]).toMatch(/^CHECK\s+STATUS\s+DETAIL$/);
      expect(lines[1]).toMatch(/^dns\s+ok\s+7\/7 names resolve/);
      expect(r.stdout).toMatch(/\nenvoy\s+FAIL\s+no Envoy admin at 127\.0\.0\.1:15000 \(ECONNREFUSED\)\n/);
      expect(r.stdout).toContain("    hint: Envoy is not running");
      expect(r.stdout).toContain("1 of 2 checks failed");
    });

    it("reports Pilot answering 503 with the registry hint", async () => {
      await setPilotFault("registry-unavailable");
      try {
        const { code, json } = await check(["--only", "discovery"]);
        expect(code).toBe(1);
        expect(json.checks[0]?.summary).toBe("Pilot answered HTTP 503 (service registry unavailable)");
        expect(json.checks[0]?.hint).toMatch(/cannot read its service registry/);
        expect(json.checks[0]?.details.join("\n")).toContain(`/v1/clusters/rawvm/sidecar~${VM_IP}~`);
      } finally {
        await setPilotFault("none");
      }
    });

    it("reports a CA that presents another identity", async () => {
      // istio-ca:15011 is Pilot's TLS port: a certificate from the same mesh root, for istiod/istio-pilot, not istio-ca.
      const { code, json } = await check(["--only", "ca"], { CA_ADDR: "istio-ca:15011" });
      expect(code).toBe(1);
      // Legacy Pilot's certificate names its service account first, then its DNS names.
      expect(json.checks[0]?.summary).toMatch(
        /^the server at istio-ca:15011 presents URI:spiffe:\/\/cluster\.local\/ns\/istio-system\/sa\/istio-pilot-service-account, DNS:istiod.*, not istio-ca$/,
      );
      expect(json.checks[0]?.hint).toMatch(/not the mesh CA/);
    });

    it("runs the istiod ADS check over mTLS, and reports a stream reset", async () => {
      const istiod = {
        ISTIO_CONTROL_PLANE: "istiod",
        DISCOVERY_ADDRESS: "istio-pilot.istio-system:15011",
        ISTIOD_SAN: "istiod.istio-system.svc",
        POD_NAMESPACE: "default",
        SERVICE_ACCOUNT: "default",
      };
      const ok = await check(["--only", "discovery"], istiod);
      expect(ok.json.checks[0]?.status, JSON.stringify(ok.json)).toBe("pass");
      expect(ok.json.checks[0]?.summary).toMatch(/^pilot ok \(\d+ clusters, ACKed version \d+\)$/);
      expect((ok.json.checks[0]?.data as { clusters: string[] }).clusters).toContain(
        "outbound|8080||istio-pilot.istio-system.svc.cluster.local",
      );
      expect(ok.code).toBe(0);

      await setPilotFault("stream-reset");
      try {
        const { code, json } = await check(["--only", "discovery"], istiod);
        expect(code).toBe(1);
        expect(json.checks[0]?.summary).toMatch(/gRPC INTERNAL/);
        expect(json.checks[0]?.details.join("\n")).toMatch(/RST_STREAM/);
        expect(json.checks[0]?.hint).toMatch(/stream was reset/);
      } finally {
        await setPilotFault("none");
      }
    });

    it("reports a wrong address in kubedns: names agree with the file, Pilot does not answer there", async () => {
      const wrong = kubednsText.replaceAll(`/${SUBNET}.${LB_BASE + 2}`, `/${SUBNET}.99`);
      writeFileSync(join(dnsmasqDir, "kubedns"), wrong);
      await stopDnsmasq();
      await startDnsmasq();
      try {
        const { code, json } = await check(["--only", "dns,discovery", "--timeout", "2s"]);
        expect(code).toBe(1);
        expect(json.checks[0]?.status).toBe("pass");
        expect(json.checks[1]?.status).toBe("fail");
        expect(json.checks[1]?.details).toContain(`istio-pilot.istio-system → ${SUBNET}.99`);
        expect(json.checks[1]?.hint).toMatch(/wrong address in kubedns/);
      } finally {
        writeFileSync(join(dnsmasqDir, "kubedns"), kubednsText);
        await stopDnsmasq();
        await startDnsmasq();
      }
    });

    it("reports dnsmasq not running", async () => {
      await stopDnsmasq();
      try {
        const { code, json } = await check(["--only", "dns", "--timeout", "1s"]);
        expect(code).toBe(1);
        expect(json.checks[0]?.hint).toMatch(/nothing answers DNS at 127\.0\.0\.1:53.*is dnsmasq running/);
        expect(json.checks[0]?.details[0]).toMatch(/127\.0\.0\.1:53 (ECONNREFUSED|TIMEOUT)/);
      } finally {
        await startDnsmasq();
      }
    });

    it("reports a missing kubedns file", async () => {
      rmSync(join(dnsmasqDir, "kubedns"));
      await stopDnsmasq();
      await startDnsmasq(false);
      try {
        const { code, json } = await check(["--only", "dns", "--timeout", "1s"]);
        expect(code).toBe(1);
        expect(json.checks[0]?.hint).toMatch(/kubedns is missing/);
      } finally {
        writeFileSync(join(dnsmasqDir, "kubedns"), kubednsText);
        await stopDnsmasq();
        await startDnsmasq();
      }
    });
  },
);
