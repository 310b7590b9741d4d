/**
 * The admin commands (cluster-env, dnsmasq, certs, register, deregister) run as the built CLI in a subprocess against
 * the dev control plane's Kubernetes API over HTTPS (client-certificate kubeconfig), for both control-plane profiles.
 */
import { execFileSync } from "node:child_process";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DevPlane } from "../../src/devplane/dev-plane.js";
import { startDevPlane } from "../../src/devplane/dev-plane.js";
import { parseCidr } from "../../src/devplane/ip-allocator.js";
import type { Profile } from "../../src/devplane/seed.js";
import { silentLogger } from "../../src/platform/logger.js";
import type { CliResult } from "../support/cli.js";
import { runCli } from "../support/cli.js";
import { requirements } from "../support/requirements.js";

const LEGACY_KUBEDNS = `server=/svc.cluster.local/10.128.0.6
address=/istio-mixer/10.128.0.7
address=/istio-pilot/10.128.0.8
address=/istio-ca/10.128.0.9
address=/istio-mixer.istio-system/10.128.0.7
address=/istio-pilot.istio-system/10.128.0.8
address=/istio-ca.istio-system/10.128.0.9
`;

interface Cluster {
  readonly plane: DevPlane;
  readonly dir: string;
  readonly kubeconfig: string;
  cli(args: readonly string[]): Promise<CliResult>;
}

async function startCluster(
  profile: Profile,
  options: { serviceCidrApi: boolean; serviceCidrs?: string[]; lbDelayMs?: number },
): Promise<Cluster> {
  const plane = await startDevPlane({
    profile,
    listen: [{ host: "127.0.0.1", port: 0 }],
    serviceCidrs: (options.serviceCidrs ?? ["10.96.0.0/12"]).map(parseCidr),
    serviceCidrApi: options.serviceCidrApi,
    lbIpBase: "10.128.0.6",
    lbDelayMs: options.lbDelayMs ?? 0,
    trustDomain: "cluster.local",
    workloadCertTtlMs: 19 * 3600_000,
    services: [],
    logger: silentLogger,
  });
  const dir = await mkdtemp(join(tmpdir(), `istio-vm-admin-${profile}-`));
  const kubeconfig = join(dir, "kubeconfig");
  await writeFile(kubeconfig, plane.kubeconfig(), { mode: 0o600 });
  return {
    plane,
    dir,
    kubeconfig,
    cli: (args) =>
      runCli(args, {
        env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin", HOME: dir, KUBECONFIG: kubeconfig },
        cwd: dir,
      }),
  };
}

async function stopCluster(cluster: Cluster | undefined): Promise<void> {
  if (cluster === undefined) return;
  await cluster.plane.close();
  await rm(cluster.dir, { recursive: true, force: true });
}

async function mode(path: string): Promise<string> {
  return ((await stat(path)).mode & 0o777).toString(8);
}

function endpointIps(cluster: Cluster, namespace: string, name: string): string[] {
  const ep = cluster.plane.context.store.tryGet("endpoints", namespace, name);
  const subsets = (ep?.["subsets"] ?? []) as { addresses?: { ip: string }[] }[];
  return subsets.flatMap((s) => (s.addresses ?? []).map((a) => a.ip));
}

describe("admin commands against a legacy (Istio 0.x) dev cluster", () => {
  let cluster: Cluster | undefined;
  const c = (): Cluster => {
    if (cluster === undefined) throw new Error("cluster not started");
    return cluster;
  };
  beforeAll(async () => {
    // No ServiceCIDR API: the CIDR must come from the dry-run probe's validation message.
    cluster = await startCluster("legacy", { serviceCidrApi: false, serviceCidrs: ["10.100.0.0/16"] });
  });
  afterAll(async () => {
    await stopCluster(cluster);
  });

  it("cluster-env writes the original three lines plus the profile, the CIDR found through a dry-run probe", async () => {
    const out = join(c().dir, "cluster.env");
    const result = await c().cli(["cluster-env", "-o", out]);
    expect(result.stderr + result.stdout).toContain("API server validation message");
    expect(result.code).toBe(0);
    expect(await readFile(out, "utf8")).toBe(
      "ISTIO_SERVICE_CIDR=10.100.0.0/16\nISTIO_SYSTEM_NAMESPACE=istio-system\nCONTROL_PLANE_AUTH_POLICY=MUTUAL_TLS\nISTIO_CONTROL_PLANE=legacy\n",
    );
    expect(await mode(out)).toBe("644");
    expect(c().plane.context.store.tryGet("services", "default", "istio-vm-service-cidr-probe")).toBeUndefined();
  });

  it("dnsmasq writes the original kubedns file", async () => {
    const out = join(c().dir, "kubedns");
    const result = await c().cli(["dnsmasq", "-o", out]);
    expect(result.code).toBe(0);
    expect(await readFile(out, "utf8")).toBe(LEGACY_KUBEDNS);
    expect(result.stderr).toContain("Install it in /etc/dnsmasq.d and restart dnsmasq");
  });

  it("certs --all writes verified PEMs from istio.default that openssl accepts, the key 0600", async () => {
    const out = join(c().dir, "certs");
    const result = await c().cli(["certs", "default", "default", "--all", "-o", out, "--json"]);
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout) as { leaf: { identity: string }; warnings: string[] };
    expect(report.leaf.identity).toBe("spiffe://cluster.local/ns/default/sa/default");
    expect(report.warnings).toEqual([]);
    expect(await mode(join(out, "key.pem"))).toBe("600");
    expect(await mode(join(out, "cert-chain.pem"))).toBe("644");
    expect(await mode(join(out, "root-cert.pem"))).toBe("644");
    if (requirements({ tools: ["openssl"] }) === undefined) {
      const verify = execFileSync(
        "openssl",
        ["verify", "-CAfile", join(out, "root-cert.pem"), join(out, "cert-chain.pem")],
        {
          encoding: "utf8",
        },
      );
      expect(verify).toContain(": OK");
    }
  });

  it("certs fails with a clear error for a service account without a secret, writing nothing", async () => {
    const out = join(c().dir, "none");
    const result = await c().cli(["certs", "nobody", "default", "--all", "-o", out]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("secret default/istio.nobody does not exist");
    await expect(stat(out)).rejects.toThrow();
  });

  it("register is idempotent and deregister removes the IP, keeping the Service", async () => {
    const first = await c().cli(["register", "mysqldb", "10.138.0.13", "3306", "-s", "db-vm", "-l", "app=mysql"]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).toContain("Registering for service 'mysqldb' ip '10.138.0.13', ports list [{3306 mysql}]");
    const second = await c().cli(["register", "mysqldb", "10.138.0.13", "3306", "-s", "db-vm"]);
    expect(second.code).toBe(0);
    expect(endpointIps(c(), "default", "mysqldb")).toEqual(["10.138.0.13"]);
    const service = c().plane.context.store.get("services", "default", "mysqldb");
    expect(service.metadata.annotations?.["alpha.istio.io/kubernetes-serviceaccounts"]).toBe("db-vm");
    expect((service["spec"] as { clusterIP?: string }).clusterIP).toMatch(/^10\.100\./);

    const gone = await c().cli(["deregister", "mysqldb", "10.138.0.13"]);
    expect(gone.code).toBe(0);
    expect(gone.stderr).toContain("Deregistered service successfully");
    expect(endpointIps(c(), "default", "mysqldb")).toEqual([]);
    expect(c().plane.context.store.tryGet("services", "default", "mysqldb")).toBeDefined();
  });

  it("concurrent registrations of different IPs all end up registered", async () => {
    const ips = ["10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5", "10.0.1.6"];
    const results = await Promise.all(ips.map((ip) => c().cli(["register", "web", ip, "http:8080"])));
    for (const r of results) expect(r.code, r.stderr).toBe(0);
    expect(endpointIps(c(), "default", "web").sort()).toEqual(ips);
  });

  it("register --dry-run prints the objects and changes nothing; --workload-entry is refused for legacy", async () => {
    const dry = await c().cli(["register", "dryrun", "10.0.2.1", "80", "--dry-run"]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain("kind: Service");
    expect(dry.stdout).toContain("kind: Endpoints");
    expect(c().plane.context.store.tryGet("services", "default", "dryrun")).toBeUndefined();
    const we = await c().cli(["register", "x", "10.0.2.1", "80", "--workload-entry"]);
    expect(we.code).toBe(2);
    expect(we.stderr).toContain("--workload-entry needs the istiod profile");
  });

  it("rejects bad input with usage errors", async () => {
    const badIp = await c().cli(["register", "svc", "10.0.0.300", "80"]);
    expect(badIp.code).toBe(2);
    expect(badIp.stderr).toContain("not an IPv4 or IPv6 address");
    const badPort = await c().cli(["register", "svc", "10.0.0.3", "http:99999"]);
    expect(badPort.code).toBe(2);
    const badCidr = await c().cli(["cluster-env", "--service-cidr", "10.0.0.1/8"]);
    expect(badCidr.code).toBe(2);
  });
});

describe("admin commands against an istiod (Istio 1.x) dev cluster", () => {
  let cluster: Cluster | undefined;
  const c = (): Cluster => {
    if (cluster === undefined) throw new Error("cluster not started");
    return cluster;
  };
  beforeAll(async () => {
    cluster = await startCluster("istiod", {
      serviceCidrApi: true,
      serviceCidrs: ["10.96.0.0/12", "fd00:10:96::/112"],
    });
  });
  afterAll(async () => {
    await stopCluster(cluster);
  });

  it("cluster-env writes istioctl's variables and both service CIDRs from the ServiceCIDR API", async () => {
    const out = join(c().dir, "cluster.env");
    const result = await c().cli([
      "cluster-env",
      "-o",
      out,
      "-n",
      "default",
      "--workload-name",
      "vm",
      "--cluster-id",
      "east",
    ]);
    expect(result.code, result.stderr).toBe(0);
    const text = await readFile(out, "utf8");
    expect(text).toContain("ISTIO_SERVICE_CIDR='10.96.0.0/12,fd00:10:96::/112'\n");
    expect(text).toContain("ISTIO_CONTROL_PLANE='istiod'\n");
    expect(text).toContain("ISTIO_META_CLUSTER_ID='east'\n");
    expect(text).toContain("SERVICE_ACCOUNT='default'\n");
    expect(text).toContain("ISTIO_SERVICE='vm.default'\n");
    expect(text).not.toContain("ISTIO_INBOUND_PORTS");
    // No kube-dns load balancer in this cluster: VMs resolve mesh names through the agent's DNS proxy.
    expect(text).toContain("ISTIO_META_DNS_CAPTURE='true'\n");
    expect(result.stdout).toContain("DNS proxy on (no kube-dns load balancer (kube-system/dns-ilb)");
    // The mesh's version (the istiod Deployment's image tag) and its defaultConfig, read from the dev API.
    expect(text).toContain("ISTIO_VERSION='1.24.2'\n");
    expect(text).toMatch(
      /^PROXY_CONFIG='\{"discoveryAddress":"istiod.istio-system.svc:15012","holdApplicationUntilProxyStarts":true,/m,
    );
    // What the VM's Envoy then presents to istiod.
    const bootstrap = await runCli(["envoy", "bootstrap", "--json"], {
      env: {
        PATH: process.env["PATH"] ?? "/usr/bin:/bin",
        ISTIO_VM_ROOT: c().dir,
        ISTIO_CLUSTER_CONFIG: out,
        ISTIO_SVC_IP: "10.0.0.9",
      },
    });
    expect(bootstrap.code, bootstrap.stderr).toBe(0);
    const node = (JSON.parse(bootstrap.stdout) as { node: { cluster: string; metadata: Record<string, unknown> } })
      .node;
    expect(node.cluster).toBe("vm.default");
    expect(node.metadata).toMatchObject({
      ISTIO_VERSION: "1.24.2",
      CLUSTER_ID: "east",
      WORKLOAD_NAME: "vm",
      PROXY_CONFIG: { holdApplicationUntilProxyStarts: true, serviceCluster: "vm.default", tracing: { sampling: 1 } },
    });
  });

  it("cluster-env: a kube-dns load balancer turns the DNS proxy off (dnsmasq path); --dns-capture overrides", async () => {
    const store = c().plane.context.store;
    store.create("services", {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "dns-ilb", namespace: "kube-system" },
      spec: { type: "LoadBalancer", ports: [{ name: "dns", port: 53, protocol: "UDP" }] },
    });
    try {
      const auto = await c().cli(["cluster-env", "-n", "default", "--json"]);
      expect(auto.code, auto.stderr).toBe(0);
      const report = JSON.parse(auto.stdout) as { dnsCapture: { capture: boolean }; content: string };
      expect(report.dnsCapture.capture).toBe(false);
      expect(report.content).not.toMatch(/^ISTIO_META_DNS_CAPTURE=/m);
      const forced = await c().cli(["cluster-env", "-n", "default", "--dns-capture", "true"]);
      expect(forced.stdout).toContain("ISTIO_META_DNS_CAPTURE='true'\n");
    } finally {
      store.delete("services", "kube-system", "dns-ilb");
    }
    const off = await c().cli(["cluster-env", "-n", "default", "--dns-capture", "false"]);
    expect(off.code, off.stderr).toBe(0);
    expect(off.stdout).not.toMatch(/^ISTIO_META_DNS_CAPTURE=/m);
  });

  it("cluster-env: --istio-version and --proxy-config override what the cluster says; a bad --proxy-config exits 2", async () => {
    const result = await c().cli([
      "cluster-env",
      "-n",
      "default",
      "--istio-version",
      "1.23.0",
      "--proxy-config",
      "concurrency: 3",
    ]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain("ISTIO_VERSION='1.23.0'\n");
    expect(result.stdout).toContain(`PROXY_CONFIG='{"concurrency":3}'\n`);
    const bad = await c().cli(["cluster-env", "-n", "default", "--proxy-config", "[1, 2]"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--proxy-config: not a ProxyConfig mapping");
  });

  it("dnsmasq points istiod's names at the east-west gateway", async () => {
    const result = await c().cli(["dnsmasq"]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toBe(
      "address=/istiod/10.128.0.6\naddress=/istiod.istio-system/10.128.0.6\naddress=/istiod.istio-system.svc/10.128.0.6\n",
    );
  });

  it("certs writes the root certificate and a verifiable istio-ca token (0600)", async () => {
    const out = join(c().dir, "certs");
    const result = await c().cli(["certs", "default", "default", "-o", out, "--token-duration", "2h"]);
    expect(result.code, result.stderr).toBe(0);
    expect(await readFile(join(out, "root-cert.pem"), "utf8")).toBe(c().plane.context.meshCa.rootCertPem);
    expect(await mode(join(out, "istio-token"))).toBe("600");
    const token = await readFile(join(out, "istio-token"), "utf8");
    const verified = c().plane.context.tokens.verify(token, "istio-ca");
    expect(verified).toMatchObject({ namespace: "default", serviceAccount: "default" });
    expect(verified.expiresAt - Date.now()).toBeGreaterThan(3600_000);
    expect(result.stdout + result.stderr).not.toContain(token);
  });

  it("register --workload-entry writes a WorkloadEntry and deregister removes it", async () => {
    const reg = await c().cli(["register", "web", "10.0.3.1", "http:8080", "--workload-entry", "-s", "web-vm"]);
    expect(reg.code, reg.stderr).toBe(0);
    const entry = c().plane.context.store.tryGet("workloadentries", "default", "web-10-0-3-1");
    expect(entry?.["spec"]).toMatchObject({ address: "10.0.3.1", serviceAccount: "web-vm", ports: { http: 8080 } });
    const again = await c().cli([
      "register",
      "web",
      "10.0.3.1",
      "http:8080",
      "--workload-entry",
      "-s",
      "web-vm",
      "--json",
    ]);
    expect((JSON.parse(again.stdout) as { actions: { action: string }[] }).actions.map((a) => a.action)).toEqual([
      "unchanged",
      "unchanged",
      "unchanged",
    ]);
    const dereg = await c().cli(["deregister", "web", "10.0.3.1", "--workload-entry"]);
    expect(dereg.code, dereg.stderr).toBe(0);
    expect(c().plane.context.store.tryGet("workloadentries", "default", "web-10-0-3-1")).toBeUndefined();
    expect(endpointIps(c(), "default", "web")).toEqual([]);
  });

  it("a user without rights gets the API's 403 with exit code 1", async () => {
    const result = await c().cli(["register", "web", "10.0.3.2", "80", "--context", "istio-vm-dev-viewer"]);
    expect(result.code).toBe(1);
    expect(result.stderr.toLowerCase()).toContain("forbidden");
  });
});

describe("dnsmasq waits for load balancers that have no address yet", () => {
  let cluster: Cluster | undefined;
  afterAll(async () => {
    await stopCluster(cluster);
  });

  it("reports progress, then succeeds once the addresses appear; fails naming the pending services when --wait is too short", async () => {
    // The dev cloud controller would give the seeded load balancers their addresses only after 10 minutes: the test
    // plays the cloud and assigns them itself, leaving istio-pilot-ilb pending for a while.
    cluster = await startCluster("legacy", { serviceCidrApi: true, lbDelayMs: 600_000 });
    const store = cluster.plane.context.store;
    const assign = (namespace: string, name: string, ip: string): void => {
      const svc = store.get("services", namespace, name);
      svc["status"] = { loadBalancer: { ingress: [{ ip }] } };
      store.update("services", svc);
    };
    assign("kube-system", "dns-ilb", "10.128.0.6");
    assign("istio-system", "mixer-ilb", "10.128.0.7");
    assign("istio-system", "istio-ca-ilb", "10.128.0.9");
    const short = await cluster.cli(["dnsmasq", "--wait", "1s", "--poll-interval", "300ms"]);
    expect(short.code, short.stdout + short.stderr).toBe(1);
    expect(short.stderr).toContain("waiting for a load-balancer address: istio-system/istio-pilot-ilb");
    expect(short.stderr).toContain("no load-balancer address after");
    expect(short.stderr).toContain("istio-system/istio-pilot-ilb");

    const pending = cluster.cli(["dnsmasq", "--wait", "1m", "--poll-interval", "200ms"]);
    const timer = setTimeout(() => {
      assign("istio-system", "istio-pilot-ilb", "10.128.0.8");
    }, 1500);
    const done = await pending;
    clearTimeout(timer);
    expect(done.code, done.stderr).toBe(0);
    expect(done.stdout).toBe(LEGACY_KUBEDNS);
  });
});
