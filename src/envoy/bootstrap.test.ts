import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { checkAgainstProto, checkAgainstV2Proto } from "../../test/support/envoy-proto.js";
import { checkAgainstV1Schema } from "../../test/support/envoy-v1-schema.js";
import { loadConfig } from "../config/load.js";
import type { BootstrapInput } from "./bootstrap.js";
import { discoverySan, renderBootstrap, serializeBootstrap, serviceNode } from "./bootstrap.js";

const SIDECAR = "/var/lib/istio/envoy/sidecar.env";
const CLUSTER = "/var/lib/istio/envoy/cluster.env";

async function input(cluster: string, sidecar: string, env: NodeJS.ProcessEnv = {}): Promise<BootstrapInput> {
  const loaded = await loadConfig({ env, fs: new MemoryFileSystem({ [CLUSTER]: cluster, [SIDECAR]: sidecar }) });
  expect(loaded.problems).toEqual([]);
  return {
    config: loaded.values,
    extraMetadata: Object.fromEntries(Object.entries(loaded.metadata).map(([k, v]) => [k, v.raw])),
    hostname: "demo-vm-1.example.internal",
  };
}

const ISTIOD_CLUSTER =
  "ISTIO_CONTROL_PLANE=istiod\nISTIO_META_CLUSTER_ID=Kubernetes\nISTIO_META_MESH_ID=mesh1\n" +
  'ISTIO_META_NETWORK=vm-network\nISTIO_META_WORKLOAD_NAME=vm-app\nISTIO_METAJSON_LABELS=\'{"app":"vm-app","version":"v1"}\'\n' +
  "POD_NAMESPACE=vm-ns\nSERVICE_ACCOUNT=vm-sa\nISTIO_VERSION=1.24.2\nISTIO_META_AUTO_REGISTER_GROUP=vm-app\n" +
  `PROXY_CONFIG='{"holdApplicationUntilProxyStarts":true,"proxyMetadata":{"ISTIO_META_OWNER":"mesh-default"}}'\n`;
const LEGACY_CLUSTER = "ISTIO_CONTROL_PLANE=legacy\nISTIO_SYSTEM_NAMESPACE=istio-system\n";
const VM = "ISTIO_SVC_IP=10.150.0.5\n";

const PROFILES = {
  "istiod-mtls": () => input(ISTIOD_CLUSTER, VM),
  "istiod-plain": () => input(ISTIOD_CLUSTER + "CONTROL_PLANE_AUTH_POLICY=NONE\n", `${VM}ENVOY_STATS_PORT=0\n`),
  "legacy-v3-mtls": () => input(`${LEGACY_CLUSTER}ENVOY_XDS_API=v3\n`, `${VM}POD_NAME=demo-vm-1\n`),
  "legacy-v3-plain": () => input(`${LEGACY_CLUSTER}CONTROL_PLANE_AUTH_POLICY=NONE\nENVOY_XDS_API=v3\n`, VM),
};

/** ENVOY_XDS_API=v1 (the legacy profile's default): the JSON configuration pilot-agent 0.2–0.7 wrote. */
const V1_PROFILES = {
  "legacy-v1-mtls": () => input(LEGACY_CLUSTER, `${VM}POD_NAME=demo-vm-1\n`),
  "legacy-v1-plain": () => input(`${LEGACY_CLUSTER}CONTROL_PLANE_AUTH_POLICY=NONE\n`, VM),
};

/** `errors` (a validator's messages, one a line) mentions each of `wanted`: a substring, or a pattern it matches. */
function expectMentions(errors: string, wanted: readonly (string | RegExp)[]): void {
  for (const w of wanted) {
    if (typeof w === "string") expect(errors).toContain(w);
    else expect(errors).toMatch(w);
  }
}

describe("renderBootstrap, v1", () => {
  for (const [name, make] of Object.entries(V1_PROFILES)) {
    it(`${name}: matches its golden file`, async () => {
      await expect(serializeBootstrap(renderBootstrap(await make()))).toMatchFileSnapshot(
        `__golden__/bootstrap-${name}.json.golden`,
      );
    });

    it(`${name}: Envoy's v1 schemas (TOP_LEVEL, LDS config, CLUSTER_MANAGER, CLUSTER, ssl_context) accept it`, async () => {
      expect(checkAgainstV1Schema("bootstrap", renderBootstrap(await make()))).toEqual([]);
    });
  }

  it("is the legacy profile's default, and is what pilot-agent 0.2 wrote: four discovery clusters to Pilot, 1 s polling", async () => {
    const i = await input(LEGACY_CLUSTER, VM);
    expect(i.config.ENVOY_XDS_API).toBe("v1");
    expect(i.config.DISCOVERY_ADDRESS).toEqual({ host: "istio-pilot.istio-system", port: 15003 });
    const b = renderBootstrap(i) as Record<string, unknown>;
    expect(b["listeners"]).toEqual([]);
    expect(b["lds"]).toEqual({ cluster: "lds", refresh_delay_ms: 1000 });
    expect(b["admin"]).toEqual({ access_log_path: "/dev/stdout", address: "tcp://127.0.0.1:15000" });
    const cm = b["cluster_manager"] as {
      clusters: { name: string; hosts: unknown; ssl_context: { verify_subject_alt_name: string[] } }[];
      sds: { cluster: { name: string }; refresh_delay_ms: number };
      cds: { cluster: { name: string }; refresh_delay_ms: number };
    };
    expect(cm.clusters.map((c) => c.name)).toEqual(["rds", "lds"]);
    expect([cm.sds.cluster.name, cm.cds.cluster.name, cm.sds.refresh_delay_ms]).toEqual(["sds", "cds", 1000]);
    for (const c of [...cm.clusters, cm.sds.cluster, cm.cds.cluster]) {
      expect(c).toMatchObject({
        connect_timeout_ms: 1000,
        type: "strict_dns",
        lb_type: "round_robin",
        hosts: [{ url: "tcp://istio-pilot.istio-system:15003" }],
        ssl_context: {
          cert_chain_file: "/etc/certs/cert-chain.pem",
          private_key_file: "/etc/certs/key.pem",
          ca_cert_file: "/etc/certs/root-cert.pem",
          verify_subject_alt_name: ["spiffe://cluster.local/ns/istio-system/sa/istio-pilot-service-account"],
        },
      });
    }
    const plain = await input(`${LEGACY_CLUSTER}CONTROL_PLANE_AUTH_POLICY=NONE\n`, VM);
    expect(plain.config.DISCOVERY_ADDRESS.port).toBe(8080);
    expect(JSON.stringify(renderBootstrap(plain))).not.toContain("ssl_context");
  });

  it("the v1 schema check rejects what Envoy 1.x rejected: unknown keys, v3 shapes, bad enums, missing fields", () => {
    const errors = checkAgainstV1Schema("bootstrap", {
      listeners: [],
      lds: { cluster: "lds", refresh_delay_ms: 0 },
      admin: { address: { socket_address: { address: "127.0.0.1", port_value: 15000 } } },
      cluster_manager: {
        clusters: [{ name: "rds", connect_timeout_ms: 1000, type: "STRICT_DNS", lb_type: "round_robin", hosts: [] }],
        sds: { cluster: { name: "sds", connect_timeout_ms: 1000, type: "sds", lb_type: "round_robin" } },
        cds: { cluster: { name: "cds", connect_timeout: "1s", type: "strict_dns", lb_type: "round_robin" } },
      },
      node: { id: "x" },
    }).join("\n");
    expectMentions(errors, [
      "(top): must NOT have additional properties 'node'",
      "/lds/refresh_delay_ms: must be > 0",
      "/admin: must have required property 'access_log_path'",
      "/admin/address: must be string",
      /clusters\/0\/type: must be equal to one of the allowed values/,
      "/cluster_manager/clusters/0/hosts: must NOT have fewer than 1 items",
      "/cluster_manager/sds: must have required property 'refresh_delay_ms'",
      "/cluster_manager/cds/cluster: must have required property 'connect_timeout_ms'",
    ]);
  });
});

/** ENVOY_XDS_API=v2 (Istio 0.8): pilot-agent 0.8's ADS bootstrap. */
const V2_PROFILES = {
  "legacy-v2-mtls": () => input(`${LEGACY_CLUSTER}ENVOY_XDS_API=v2\n`, `${VM}POD_NAME=demo-vm-1\n`),
  "legacy-v2-plain": () =>
    input(`${LEGACY_CLUSTER}CONTROL_PLANE_AUTH_POLICY=NONE\nENVOY_XDS_API=v2\n`, `${VM}ENVOY_STATS_PORT=0\n`),
};

describe("renderBootstrap, v2", () => {
  for (const [name, make] of Object.entries(V2_PROFILES)) {
    it(`${name}: matches its golden file`, async () => {
      await expect(serializeBootstrap(renderBootstrap(await make()))).toMatchFileSnapshot(
        `__golden__/bootstrap-${name}.json.golden`,
      );
    });

    it(`${name}: every field is one of Envoy's v2 Bootstrap with the right type (v2 proto subset)`, async () => {
      const check = checkAgainstV2Proto(renderBootstrap(await make()));
      expect(check.errors).toEqual([]);
      expect(check.verify).toBeNull();
      expect(check.typesSeen).toContain("envoy.api.v2.Cluster");
      if (name.endsWith("mtls")) expect(check.typesSeen).toContain("envoy.api.v2.auth.UpstreamTlsContext");
    });
  }

  it("is pilot-agent 0.8's: node with ISTIO_META_* and istio=sidecar, LDS/CDS over ADS to xds-grpc on 15011 with Pilot's SAN", async () => {
    const i = await input(LEGACY_CLUSTER, VM, { ENVOY_XDS_API: "v2", ISTIO_META_OWNER: "team-a" });
    const b = renderBootstrap(i) as Record<string, unknown>;
    expect(b["node"]).toMatchObject({
      id: "sidecar~10.150.0.5~demo-vm-1.default~default.svc.cluster.local",
      cluster: "rawvm",
      metadata: { OWNER: "team-a", istio: "sidecar" },
    });
    expect(b["admin"]).toEqual({
      access_log_path: "/dev/stdout",
      address: { socket_address: { address: "127.0.0.1", port_value: 15000 } },
    });
    expect(b["dynamic_resources"]).toEqual({
      lds_config: { ads: {} },
      cds_config: { ads: {} },
      ads_config: {
        api_type: "GRPC",
        refresh_delay: "1s",
        grpc_services: [{ envoy_grpc: { cluster_name: "xds-grpc" } }],
      },
    });
    const clusters = (b["static_resources"] as { clusters: Record<string, unknown>[] }).clusters;
    const xds = clusters.find((c) => c["name"] === "xds-grpc");
    expect(xds).toMatchObject({
      type: "STRICT_DNS",
      hosts: [{ socket_address: { address: "istio-pilot.istio-system", port_value: 15011 } }],
      http2_protocol_options: {},
      tls_context: {
        common_tls_context: {
          tls_certificates: [
            {
              certificate_chain: { filename: "/etc/certs/cert-chain.pem" },
              private_key: { filename: "/etc/certs/key.pem" },
            },
          ],
          validation_context: {
            trusted_ca: { filename: "/etc/certs/root-cert.pem" },
            verify_subject_alt_name: ["spiffe://cluster.local/ns/istio-system/sa/istio-pilot-service-account"],
          },
        },
      },
    });
    // No v3 name anywhere: no typed configs, no transport sockets, no resource_api_version.
    expect(JSON.stringify(b)).not.toMatch(/v3|transport_socket|resource_api_version|@type/);
    const plain = await input(`${LEGACY_CLUSTER}CONTROL_PLANE_AUTH_POLICY=NONE\n`, VM, { ENVOY_XDS_API: "v2" });
    const plainText = JSON.stringify(renderBootstrap(plain));
    expect(plainText).toContain('"port_value":15010');
    expect(plainText).not.toContain("tls_context");
  });

  it("the v2 check rejects what v2 Envoy rejected: v3-only fields, unknown keys, wrong types, bad enums", () => {
    const errors = checkAgainstV2Proto({
      node: { id: "x", user_agent_name: "envoy" },
      admin: { address: { socket_address: { address: "127.0.0.1", port_value: "15000" } } },
      dynamic_resources: { lds_config: { ads: {}, resource_api_version: "V3" } },
      static_resources: {
        clusters: [{ name: "c", lb_policy: "ROUND_ROBINN", transport_socket: {}, connect_timeout: 1 }],
        listeners: [
          {
            name: "l",
            bind_to_port: false,
            filter_chains: [{ filters: [{ name: "f", config: {}, typed_config: {} }] }],
          },
        ],
      },
    }).errors.join("\n");
    expectMentions(errors, [
      "node.user_agent_name: no field 'user_agent_name'",
      "port_value: expected a uint32",
      "lds_config.resource_api_version: no field",
      'lb_policy: "ROUND_ROBINN" is not one of LbPolicy',
      "transport_socket: no field 'transport_socket'",
      "connect_timeout: expected a Duration",
      "listeners[0].bind_to_port: no field 'bind_to_port'",
      /'typed_config' and 'config' are both set/,
    ]);
  });
});

describe("renderBootstrap", () => {
  for (const [name, make] of Object.entries(PROFILES)) {
    it(`${name}: matches its golden file`, async () => {
      await expect(serializeBootstrap(renderBootstrap(await make()))).toMatchFileSnapshot(
        `__golden__/bootstrap-${name}.json.golden`,
      );
    });

    it(`${name}: every field exists in Envoy's Bootstrap proto with the right type, typed configs included`, async () => {
      const bootstrap = renderBootstrap(await make());
      const check = checkAgainstProto(bootstrap);
      expect(check.errors).toEqual([]);
      expect(check.verify).toBeNull();
      expect(check.typesSeen).toContain("envoy.extensions.upstreams.http.v3.HttpProtocolOptions");
      if (name.startsWith("legacy") && name.endsWith("mtls")) {
        expect(check.typesSeen).toContain("envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext");
      }
    });
  }

  it("istiod: no certificate file is named; SDS and xDS go to the agent's sockets (pipe), never to istiod", async () => {
    for (const profile of ["istiod-mtls", "istiod-plain"] as const) {
      const bootstrap = renderBootstrap(await PROFILES[profile]());
      const text = JSON.stringify(bootstrap);
      expect(text).not.toMatch(/"filename"|key\.pem|cert-chain\.pem|root-cert\.pem/);
      // Envoy's only TLS connection was to istiod; the agent makes it now.
      expect(text).not.toContain("UpstreamTlsContext");
      const clusters = (bootstrap["static_resources"] as { clusters: { name: string }[] }).clusters;
      const sds = clusters.find((c) => c.name === "sds-grpc");
      expect(JSON.stringify(sds)).toContain('"pipe":{"path":"/run/istio-vm/workload-spiffe-uds/socket"}');
      const xds = clusters.find((c) => c.name === "xds-grpc");
      expect(xds).toMatchObject({
        type: "STATIC",
        load_assignment: {
          endpoints: [{ lb_endpoints: [{ endpoint: { address: { pipe: { path: "/run/istio-vm/xds/XDS" } } } }] }],
        },
      });
      expect(JSON.stringify(xds)).toContain('"http2_protocol_options":{}');
      expect(JSON.stringify(xds)).not.toMatch(/istiod|1501[02]|socket_address/);
    }
  });

  it("legacy: Envoy reads the files in OUTPUT_CERTS (hot restart on renewal), no SDS cluster", async () => {
    const text = JSON.stringify(renderBootstrap(await PROFILES["legacy-v3-mtls"]()));
    expect(text).toContain('"private_key":{"filename":"/etc/certs/key.pem"}');
    expect(text).not.toContain("sds-grpc");
  });

  it("the validator rejects what real Envoy would reject: unknown fields, wrong types, bad enums, typos in @type", () => {
    const bad = {
      node: { id: "x", clusterr: "typo" },
      admin: { address: { socket_address: { address: "127.0.0.1", port_value: "15000" } } },
      static_resources: {
        clusters: [
          {
            name: "c",
            connect_timeout: 1,
            lb_policy: "ROUND_ROBINN",
            transport_socket: {
              name: "tls",
              typed_config: {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                common_tls_context: { validation_context: { trusted_ca: { filenam: "/x" } } },
              },
            },
            typed_extension_protocol_options: {
              x: { "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.NoSuchThing" },
            },
          },
        ],
      },
      dynamic_resources: { lds_config: { ads: {}, path: "/x" } },
    };
    const errors = checkAgainstProto(bad).errors.join("\n");
    expectMentions(errors, [
      "node.clusterr: no field 'clusterr'",
      "port_value: expected a uint32",
      "connect_timeout: expected a Duration",
      'lb_policy: "ROUND_ROBINN" is not one of LbPolicy',
      "trusted_ca.filenam: no field 'filenam'",
      "NoSuchThing is not a message type",
      /lds_config\.path.*(both set|deprecated)/,
    ]);
  });

  it("node id and service node follow sidecar~<ip>~<name>.<ns>~<ns>.svc.cluster.local, the short host name for an empty POD_NAME", async () => {
    const i = await input(ISTIOD_CLUSTER, VM);
    expect(serviceNode(i)).toBe("sidecar~10.150.0.5~demo-vm-1.vm-ns~vm-ns.svc.cluster.local");
    expect(renderBootstrap(i)["node"]).toMatchObject({
      id: "sidecar~10.150.0.5~demo-vm-1.vm-ns~vm-ns.svc.cluster.local",
      cluster: "vm-app.vm-ns",
      metadata: {
        NAMESPACE: "vm-ns",
        SERVICE_ACCOUNT: "vm-sa",
        INSTANCE_IPS: "10.150.0.5",
        ISTIO_VERSION: "1.24.2",
        CLUSTER_ID: "Kubernetes",
        MESH_ID: "mesh1",
        NETWORK: "vm-network",
        WORKLOAD_NAME: "vm-app",
        AUTO_REGISTER_GROUP: "vm-app",
        LABELS: { app: "vm-app", version: "v1" },
      },
    });
  });

  it("istiod: passes every other ISTIO_META_* through; an ISTIO_METAJSON_* object merges at the top, as pilot-agent does", async () => {
    const i = await input(ISTIOD_CLUSTER, VM, { ISTIO_META_OWNER: "team-a", ISTIO_METAJSON_EXTRA: '{"k":[1,2]}' });
    const metadata = (renderBootstrap(i)["node"] as { metadata: Record<string, unknown> }).metadata;
    expect(metadata["OWNER"]).toBe("team-a");
    expect(metadata["k"]).toEqual([1, 2]);
    expect(metadata["EXTRA"]).toBeUndefined();
  });

  it("legacy: ISTIO_METAJSON_<K> stays under <K>, as the 0.8 golden has always had it", async () => {
    const i = await input(LEGACY_CLUSTER, VM, { ENVOY_XDS_API: "v3", ISTIO_METAJSON_EXTRA: '{"k":[1,2]}' });
    const metadata = (renderBootstrap(i)["node"] as { metadata: Record<string, unknown> }).metadata;
    expect(metadata["EXTRA"]).toEqual({ k: [1, 2] });
  });

  it("legacy Pilot's SAN is the pilot service account in the namespace named by the discovery host", async () => {
    const legacy = await input(LEGACY_CLUSTER, VM, { DISCOVERY_ADDRESS: "istio-pilot.mesh-ctl:15011" });
    expect(discoverySan(legacy.config)).toEqual({
      type: "URI",
      value: "spiffe://cluster.local/ns/mesh-ctl/sa/istio-pilot-service-account",
    });
    const noDot = await input(LEGACY_CLUSTER, VM, { DISCOVERY_ADDRESS: "istio-pilot:15011", POD_NAMESPACE: "apps" });
    expect(discoverySan(noDot.config).value).toBe("spiffe://cluster.local/ns/apps/sa/istio-pilot-service-account");
    const ip = await input(LEGACY_CLUSTER, VM, { DISCOVERY_ADDRESS: "10.0.0.9:15011" });
    expect(discoverySan(ip.config).value).toBe("spiffe://cluster.local/ns/istio-system/sa/istio-pilot-service-account");
  });

  it("legacy: dials an IP discovery address as a STATIC cluster and a name as STRICT_DNS", async () => {
    const byIp = renderBootstrap(
      await input(LEGACY_CLUSTER, VM, { ENVOY_XDS_API: "v3", DISCOVERY_ADDRESS: "192.0.2.10:15011" }),
    );
    const clusters = (byIp["static_resources"] as { clusters: { name: string; type: string }[] }).clusters;
    expect(clusters.find((c) => c.name === "xds-grpc")?.type).toBe("STATIC");
    expect(checkAgainstProto(byIp).errors).toEqual([]);
    const byName = renderBootstrap(await input(LEGACY_CLUSTER, VM, { ENVOY_XDS_API: "v3" }));
    const named = (byName["static_resources"] as { clusters: { name: string; type: string }[] }).clusters;
    expect(named.find((c) => c.name === "xds-grpc")?.type).toBe("STRICT_DNS");
  });
});
