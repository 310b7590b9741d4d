import { describe, expect, it } from "vitest";
import { parseEnvFile } from "../config/env-file.js";
import { loadConfig } from "../config/load.js";
import { KubeApiError } from "./client.js";
import {
  PROBE_SERVICE_NAME,
  decideDnsCapture,
  discoverServiceCidr,
  parseValidRange,
  planClusterEnv,
  istioVersionFrom,
  readMeshSettings,
  trustDomainFromMeshConfig,
} from "./cluster-env.js";
import { FakeKubeClient, seedIstiodCluster, seedLegacyCluster } from "../../test/fakes/kube-client.js";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";

describe("planClusterEnv", () => {
  it("writes the legacy file exactly as setupMeshEx.sh did, plus the profile", async () => {
    const text = planClusterEnv({
      profile: "legacy",
      serviceCidr: "10.63.240.0/20",
      systemNamespace: "istio-system",
      authPolicy: "MUTUAL_TLS",
    });
    expect(text.split("\n").slice(0, 3)).toEqual([
      "ISTIO_SERVICE_CIDR=10.63.240.0/20",
      "ISTIO_SYSTEM_NAMESPACE=istio-system",
      "CONTROL_PLANE_AUTH_POLICY=MUTUAL_TLS",
    ]);
    await expect(text).toMatchFileSnapshot("__golden__/cluster.env.legacy");
  });

  it("writes the istiod file sorted and quoted as istioctl does, without ISTIO_INBOUND_PORTS", async () => {
    const text = planClusterEnv({
      profile: "istiod",
      serviceCidr: "10.96.0.0/12,fd00:10:96::/112",
      systemNamespace: "istio-system",
      authPolicy: "MUTUAL_TLS",
      workload: {
        namespace: "shop",
        serviceAccount: "mysql-vm",
        trustDomain: "example.org",
        clusterId: "east",
        meshId: "mesh1",
        network: "vm-net",
        workloadName: "mysql",
        canonicalRevision: "v1",
      },
    });
    expect(text).not.toContain("ISTIO_INBOUND_PORTS");
    const keys = text
      .trim()
      .split("\n")
      .map((l) => l.split("=")[0] ?? "");
    expect(keys).toEqual([...keys].sort());
    expect(text).toContain("ISTIO_META_CLUSTER_ID='east'\n");
    await expect(text).toMatchFileSnapshot("__golden__/cluster.env.istiod");
  });

  it("writes ISTIO_INBOUND_PORTS only when asked, and the result parses back to the same values", () => {
    const text = planClusterEnv({
      profile: "istiod",
      serviceCidr: "*",
      systemNamespace: "istio-system",
      authPolicy: "NONE",
      inboundPorts: "8080, 3306",
      workload: {
        namespace: "default",
        serviceAccount: "default",
        trustDomain: "cluster.local",
        clusterId: "Kubernetes",
      },
    });
    const values = Object.fromEntries(parseEnvFile(text, "cluster.env").map((e) => [e.key, e.value]));
    expect(values).toMatchObject({
      ISTIO_INBOUND_PORTS: "8080,3306",
      ISTIO_SERVICE_CIDR: "*",
      CONTROL_PLANE_AUTH_POLICY: "NONE",
      ISTIO_CONTROL_PLANE: "istiod",
      POD_NAMESPACE: "default",
    });
    expect(values["ISTIO_META_WORKLOAD_NAME"]).toBeUndefined();
  });
});

describe("DNS proxy default (istiod profile)", () => {
  const base = {
    profile: "istiod" as const,
    serviceCidr: "10.96.0.0/12",
    systemNamespace: "istio-system",
    authPolicy: "MUTUAL_TLS" as const,
    workload: { namespace: "shop", serviceAccount: "vm", trustDomain: "cluster.local", clusterId: "Kubernetes" },
  };

  it("is on when the cluster has no kube-dns load balancer, off when it has one; the flag wins either way", () => {
    expect(decideDnsCapture("auto", "kube-system/dns-ilb", false)).toMatchObject({ capture: true });
    expect(decideDnsCapture("auto", "kube-system/dns-ilb", true)).toMatchObject({ capture: false });
    expect(decideDnsCapture("false", "kube-system/dns-ilb", false)).toEqual({
      capture: false,
      reason: "--dns-capture",
    });
    expect(decideDnsCapture("true", "kube-system/dns-ilb", true)).toEqual({ capture: true, reason: "--dns-capture" });
  });

  it("writes ISTIO_META_DNS_CAPTURE='true' only when on, and the agent reads it back", async () => {
    expect(planClusterEnv(base)).not.toContain("DNS_CAPTURE");
    const text = planClusterEnv({ ...base, dnsCapture: true });
    expect(text).toContain("ISTIO_META_DNS_CAPTURE='true'\n");
    const fs = new MemoryFileSystem({ "/var/lib/istio/envoy/cluster.env": text });
    const loaded = await loadConfig({ env: { ISTIO_SVC_IP: "10.0.0.5" }, fs });
    expect(loaded.values.ISTIO_META_DNS_CAPTURE).toBe(true);
  });
});

describe("revisioned istiod", () => {
  it("writes the addresses and TLS name of istiod-<rev>, which the agent's defaults do not know", () => {
    const text = planClusterEnv({
      profile: "istiod",
      serviceCidr: "10.96.0.0/12",
      systemNamespace: "istio-system",
      authPolicy: "NONE",
      istiodService: "istiod-1-22",
      workload: {
        namespace: "default",
        serviceAccount: "default",
        trustDomain: "cluster.local",
        clusterId: "Kubernetes",
      },
    });
    expect(text).toContain("CA_ADDR='istiod-1-22.istio-system.svc:15012'\n");
    expect(text).toContain("PILOT_ADDRESS='istiod-1-22.istio-system.svc:15012'\n");
    expect(text).toContain("DISCOVERY_ADDRESS='istiod-1-22.istio-system.svc:15010'\n");
    expect(text).toContain("ISTIOD_SAN='istiod-1-22.istio-system.svc'\n");
  });
  it("writes none of them for plain istiod", () => {
    const text = planClusterEnv({
      profile: "istiod",
      serviceCidr: "10.96.0.0/12",
      systemNamespace: "istio-system",
      authPolicy: "MUTUAL_TLS",
      istiodService: "istiod",
      workload: {
        namespace: "default",
        serviceAccount: "default",
        trustDomain: "cluster.local",
        clusterId: "Kubernetes",
      },
    });
    expect(text).not.toMatch(/CA_ADDR|PILOT_ADDRESS|DISCOVERY_ADDRESS|ISTIOD_SAN/);
  });
});

describe("parseValidRange", () => {
  it("reads the range from the API server's allocation error", () => {
    const message =
      'Service "x" is invalid: spec.clusterIPs: Invalid value: ["0.0.0.1"]: failed to allocate IP 0.0.0.1: the provided IP (0.0.0.1) is not in the valid range. The range of valid IPs is 10.96.0.0/12';
    expect(parseValidRange(message).map((c) => `${c.address}/${c.prefix}`)).toEqual(["10.96.0.0/12"]);
  });
  it("reads IPv6 ranges and lists, and nothing from unrelated messages", () => {
    expect(parseValidRange("The range of valid IPs is fd00:10:96::/112.")).toHaveLength(1);
    expect(parseValidRange("The range of valid IPs is 10.0.0.0/16,10.1.0.0/16")).toHaveLength(2);
    expect(parseValidRange("forbidden: User cannot create services")).toEqual([]);
  });
});

describe("discoverServiceCidr", () => {
  it("prefers the flag and validates it", async () => {
    const client = new FakeKubeClient();
    await expect(discoverServiceCidr(client, { flag: "10.0.0.0/16", probeNamespace: "default" })).resolves.toEqual({
      value: "10.0.0.0/16",
      source: "flag",
    });
    expect(client.requests).toEqual([]);
    await expect(discoverServiceCidr(client, { flag: "10.0.0.1/16", probeNamespace: "default" })).rejects.toThrow(
      /host bits/,
    );
  });

  it("reads both families from the ServiceCIDR API", async () => {
    const client = new FakeKubeClient();
    await seedIstiodCluster(client.store);
    const found = await discoverServiceCidr(client, { probeNamespace: "default" });
    expect(found).toEqual({ value: "10.96.0.0/12,fd00:10:96::/112", source: "ServiceCIDR API" });
    expect(client.requests).toHaveLength(1);
  });

  it("falls back to a dry-run Service that creates nothing", async () => {
    const client = new FakeKubeClient({ serviceRanges: ["10.100.0.0/16"] });
    await seedLegacyCluster(client.store);
    const found = await discoverServiceCidr(client, { probeNamespace: "default" });
    expect(found).toEqual({ value: "10.100.0.0/16", source: "API server validation message" });
    const creates = client.requests.filter((r) => r.verb === "create");
    expect(creates.length).toBeGreaterThan(0);
    expect(creates.every((r) => r.dryRun)).toBe(true);
    expect(client.store.tryGet("services", "default", PROBE_SERVICE_NAME)).toBeUndefined();
  });

  it("finds both ranges of a dual-stack cluster without the ServiceCIDR API", async () => {
    const client = new FakeKubeClient({ serviceRanges: ["10.100.0.0/16", "fd00:1::/108"] });
    const found = await discoverServiceCidr(client, { probeNamespace: "default" });
    expect(found.value).toBe("10.100.0.0/16,fd00:1::/108");
  });

  it("fails naming --service-cidr when nothing answers", async () => {
    const client = new FakeKubeClient({
      intercept: (r) => {
        if (r.verb === "create") {
          throw new KubeApiError({
            status: 403,
            reason: "Forbidden",
            message: "cannot create services",
            subject: r.path,
          });
        }
      },
    });
    const error = await discoverServiceCidr(client, { probeNamespace: "default" }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "SERVICE_CIDR_UNKNOWN" });
    expect((error as Error).message).toContain("cannot create services");
    expect((error as { hint: string }).hint).toContain("--service-cidr");
  });
});

describe("readMeshSettings", () => {
  it("reads cluster ID, mesh ID, network and trust domain from Istio's ConfigMaps", async () => {
    const client = new FakeKubeClient();
    await seedIstiodCluster(client.store);
    await expect(readMeshSettings(client, "istio-system")).resolves.toEqual({
      clusterId: "east",
      meshId: "mesh1",
      network: "vm-net",
      trustDomain: "example.org",
      proxyConfig: { discoveryAddress: "istiod.istio-system.svc:15012" },
      istioVersion: { value: "1.24.2", source: "deployment/istiod image docker.io/istio/pilot:1.24.2" },
    });
  });
  it("finds the version in a label or the revision when the image tag says nothing; a revision has its own ConfigMap", async () => {
    const client = new FakeKubeClient();
    client.store.create("deployments", {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "istiod-1-23-1", namespace: "istio-system" },
      spec: { template: { spec: { containers: [{ name: "discovery", image: "registry.local/pilot@sha256:abc" }] } } },
    });
    client.store.create("configmaps", {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { name: "istio-1-23-1", namespace: "istio-system", labels: { "istio.io/rev": "1-23-1" } },
      data: {
        mesh: "defaultConfig:\n  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: 'true'\n  holdApplicationUntilProxyStarts: true\n",
      },
    });
    await expect(readMeshSettings(client, "istio-system", "istiod-1-23-1")).resolves.toEqual({
      proxyConfig: { proxyMetadata: { ISTIO_META_DNS_CAPTURE: "true" }, holdApplicationUntilProxyStarts: true },
      istioVersion: { value: "1.23.1", source: "configmap/istio-1-23-1 label istio.io/rev=1-23-1" },
    });
  });
  it("a mesh config that is not YAML is an error naming the ConfigMap", async () => {
    const client = new FakeKubeClient();
    client.store.create("configmaps", {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { name: "istio", namespace: "istio-system" },
      data: { mesh: "defaultConfig: [unclosed\n" },
    });
    await expect(readMeshSettings(client, "istio-system")).rejects.toMatchObject({ code: "MESH_CONFIG_INVALID" });
  });
  it("versions from image tags and revisions", () => {
    expect(istioVersionFrom("docker.io/istio/pilot:1.24.2-distroless", "image")).toBe("1.24.2");
    expect(istioVersionFrom("gcr.io/istio-release/pilot:1.25.0-beta.1@sha256:ff", "image")).toBe("1.25.0-beta.1");
    expect(istioVersionFrom("localhost:5000/pilot", "image")).toBeUndefined();
    expect(istioVersionFrom("docker.io/istio/pilot:latest", "image")).toBeUndefined();
    expect(istioVersionFrom("1-24-2", "revision")).toBe("1.24.2");
    expect(istioVersionFrom("default", "revision")).toBeUndefined();
  });
  it("cluster.env carries ISTIO_VERSION and the mesh's defaultConfig as PROXY_CONFIG JSON, which the agent loads", async () => {
    const text = planClusterEnv({
      profile: "istiod",
      serviceCidr: "10.96.0.0/12",
      systemNamespace: "istio-system",
      authPolicy: "MUTUAL_TLS",
      workload: {
        namespace: "shop",
        serviceAccount: "sa",
        trustDomain: "cluster.local",
        clusterId: "Kubernetes",
        istioVersion: "1.24.2",
        proxyConfig: { holdApplicationUntilProxyStarts: true, proxyMetadata: { A: "it's" } },
      },
    });
    expect(text).toContain("ISTIO_VERSION='1.24.2'\n");
    const loaded = await loadConfig({
      env: {},
      fs: new MemoryFileSystem({ "/var/lib/istio/envoy/cluster.env": text }),
    });
    expect(loaded.problems).toEqual([]);
    expect(loaded.values.ISTIO_VERSION).toBe("1.24.2");
    expect(loaded.values.PROXY_CONFIG).toEqual({ holdApplicationUntilProxyStarts: true, proxyMetadata: { A: "it's" } });
  });
  it("leaves everything unset when the ConfigMaps are missing", async () => {
    await expect(readMeshSettings(new FakeKubeClient(), "istio-system")).resolves.toEqual({});
  });
  it("reads only a top-level trustDomain", async () => {
    expect(await trustDomainFromMeshConfig("defaultConfig:\n  trustDomain: nested\n")).toBeUndefined();
    expect(await trustDomainFromMeshConfig('trustDomain: "td.example" # comment\n')).toBe("td.example");
  });
});

describe("the agent reads what cluster-env writes", () => {
  it.each(["legacy", "istiod"] as const)("%s: loads without problems or unknown variables", async (profile) => {
    const text = planClusterEnv({
      profile,
      serviceCidr: "10.96.0.0/12,fd00:10:96::/112",
      systemNamespace: "istio-system",
      authPolicy: "MUTUAL_TLS",
      inboundPorts: "3306",
      istiodService: "istiod-1-22",
      workload: {
        namespace: "shop",
        serviceAccount: "mysql-vm",
        trustDomain: "example.org",
        clusterId: "east",
        meshId: "mesh1",
        network: "vm-net",
        workloadName: "mysql",
      },
    });
    const fs = new MemoryFileSystem({ "/etc/cluster.env": text });
    const loaded = await loadConfig({
      env: { ISTIO_CLUSTER_CONFIG: "/etc/cluster.env", ISTIO_SIDECAR_CONFIG: "/etc/sidecar.env" },
      fs,
    });
    expect(loaded.problems).toEqual([]);
    expect(loaded.warnings).toEqual([]);
    expect(loaded.values.ISTIO_CONTROL_PLANE).toBe(profile);
    expect(loaded.values.ISTIO_SERVICE_CIDR).toHaveLength(2);
    if (profile === "istiod") {
      expect(loaded.values.SERVICE_ACCOUNT).toBe("mysql-vm");
      expect(loaded.values.POD_NAMESPACE).toBe("shop");
      expect(loaded.values.TRUST_DOMAIN).toBe("example.org");
      expect(loaded.values.ISTIOD_SAN).toBe("istiod-1-22.istio-system.svc");
    }
  });
});
