/**
 * For each input, the node block Istio's pilot-agent would send for the same settings, with the upstream function
 * (istio/istio, release 1.24) that decides each expectation. Inputs go through the real configuration loader, as
 * cluster.env / sidecar.env lines.
 */
import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { loadConfig } from "../config/load.js";
import type { NodeBlock } from "./node-block.js";
import { ISTIO_DEFAULT_PROXY_CONFIG, applyProxyConfig, buildNodeBlock, canonicalService } from "./node-block.js";
import { probeNode } from "./node.js";

const CLUSTER = "/var/lib/istio/envoy/cluster.env";
const SIDECAR = "/var/lib/istio/envoy/sidecar.env";
const HOSTNAME = "vm-1.example.internal";

async function nodeFor(cluster: string, sidecar = "ISTIO_SVC_IP=10.0.0.5\n", env: NodeJS.ProcessEnv = {}) {
  const loaded = await loadConfig({ env, fs: new MemoryFileSystem({ [CLUSTER]: cluster, [SIDECAR]: sidecar }) });
  expect(loaded.problems).toEqual([]);
  const extraMetadata = Object.fromEntries(Object.entries(loaded.metadata).map(([k, v]) => [k, v.raw]));
  return { block: buildNodeBlock({ config: loaded.values, extraMetadata, hostname: HOSTNAME }), loaded, extraMetadata };
}

interface Row {
  readonly name: string;
  /** cluster.env lines (ISTIO_CONTROL_PLANE=istiod unless the row says otherwise). */
  readonly clusterEnv: string;
  readonly sidecarEnv?: string;
  readonly env?: NodeJS.ProcessEnv;
  /** Each expectation and the upstream function (file, release) that makes pilot-agent send it. */
  readonly expect: readonly {
    readonly upstream: string;
    readonly check: (node: NodeBlock) => void;
  }[];
}

const CONFIG_GO = "pkg/bootstrap/config.go (1.24)";
const CLUSTER_RULE = `getServiceCluster → serviceClusterOrDefault, ${CONFIG_GO}`;
const META_RULE = `GetNodeMetaData (ISTIO_META_* pass-through, typed NodeMetadata fields of pkg/model/proxy.go), ${CONFIG_GO}`;
const LABELS_RULE = `extractAttributesMetadata (LABELS, STATIC_LABELS from ISTIO_METAJSON_LABELS), ${CONFIG_GO}`;
const CANONICAL_RULE =
  "CanonicalService, pkg/kube/labels/labels.go (1.24), as istioctl/pkg/workload/workload.go adds it to a VM's labels";
const MERGE_RULE =
  "ConstructProxyConfig/getMeshConfig, pilot/cmd/pilot-agent/config/config.go, with ApplyProxyConfig, pkg/config/mesh/mesh.go (1.24)";

const md = (n: NodeBlock): Record<string, unknown> => n.metadata;

const ROWS: readonly Row[] = [
  {
    name: "app label, namespace default (the issue's example)",
    clusterEnv: `POD_NAMESPACE=default\nISTIO_METAJSON_LABELS='{"app":"mysql"}'\nISTIO_VERSION=1.24.2\n`,
    expect: [
      {
        upstream: CLUSTER_RULE,
        check: (n) => {
          expect(n.cluster).toBe("mysql.default");
        },
      },
      {
        upstream: CANONICAL_RULE,
        check: (n) => {
          expect(md(n)["LABELS"]).toEqual({
            app: "mysql",
            "service.istio.io/canonical-name": "mysql",
            "service.istio.io/canonical-revision": "latest",
          });
        },
      },
      {
        upstream: LABELS_RULE,
        check: (n) => {
          expect(md(n)["STATIC_LABELS"]).toEqual(md(n)["LABELS"]);
        },
      },
      {
        upstream: `GetNodeMetaData: an ISTIO_METAJSON_* object merges into the metadata's top level, ${CONFIG_GO}`,
        check: (n) => {
          expect(md(n)["app"]).toBe("mysql");
        },
      },
      {
        upstream: `SetIstioVersion, ${CONFIG_GO}`,
        check: (n) => {
          expect(md(n)["ISTIO_VERSION"]).toBe("1.24.2");
        },
      },
      {
        upstream:
          "model.Proxy ServiceNode (sidecar~ip~name.ns~ns.svc.cluster.local), pilot/pkg/model/context.go (1.24)",
        check: (n) => {
          expect(n.id).toBe("sidecar~10.0.0.5~vm-1.default~default.svc.cluster.local");
        },
      },
    ],
  },
  {
    name: "no labels, a workload name, another namespace, network and mesh id",
    clusterEnv:
      "POD_NAMESPACE=apps\nSERVICE_ACCOUNT=billing\nISTIO_META_WORKLOAD_NAME=billing-vm\n" +
      "ISTIO_META_NETWORK=vm-net\nISTIO_META_MESH_ID=mesh-a\nISTIO_META_CLUSTER_ID=east\n",
    expect: [
      {
        upstream: CLUSTER_RULE,
        check: (n) => {
          expect(n.cluster).toBe("billing-vm.apps");
        },
      },
      {
        upstream: CANONICAL_RULE,
        check: (n) => {
          expect(md(n)["LABELS"]).toEqual({
            "service.istio.io/canonical-name": "billing-vm",
            "service.istio.io/canonical-revision": "latest",
          });
        },
      },
      {
        upstream: META_RULE,
        check: (n) => {
          expect(n.metadata).toMatchObject({
            NAMESPACE: "apps",
            SERVICE_ACCOUNT: "billing",
            WORKLOAD_NAME: "billing-vm",
            NETWORK: "vm-net",
            MESH_ID: "mesh-a",
            CLUSTER_ID: "east",
            INSTANCE_IPS: "10.0.0.5",
            NAME: "vm-1",
          });
        },
      },
      {
        upstream: `SetIstioVersion (no version known: nothing to send; istiod then assumes the newest), ${CONFIG_GO}`,
        check: (n) => {
          expect(md(n)["ISTIO_VERSION"]).toBeUndefined();
        },
      },
    ],
  },
  {
    name: "no labels, no workload name",
    clusterEnv: "POD_NAMESPACE=default\n",
    expect: [
      {
        upstream: CLUSTER_RULE,
        check: (n) => {
          expect(n.cluster).toBe("istio-proxy.default");
        },
      },
      {
        upstream: LABELS_RULE,
        check: (n) => {
          expect(md(n)["LABELS"]).toBeUndefined();
        },
      },
      {
        upstream: `GetNodeMetaData: EnvoyStatusPort / EnvoyPrometheusPort (ints), ${CONFIG_GO}; pilot-agent defaults 15021 / 15090`,
        check: (n) => {
          expect(n.metadata).toMatchObject({ ENVOY_STATUS_PORT: 15021, ENVOY_PROMETHEUS_PORT: 15090 });
        },
      },
      {
        upstream:
          "Agent.generateNodeMetadata (PILOT_SAN under MUTUAL_TLS: the discovery host), pkg/istio-agent/agent.go (1.24)",
        check: (n) => {
          expect(md(n)["PILOT_SAN"]).toEqual(["istiod.istio-system.svc"]);
        },
      },
      {
        upstream: `${MERGE_RULE}: DefaultProxyConfig when the mesh sets nothing`,
        check: (n) => {
          expect(md(n)["PROXY_CONFIG"]).toEqual(ISTIO_DEFAULT_PROXY_CONFIG);
        },
      },
    ],
  },
  {
    name: "app.kubernetes.io labels and a version label",
    clusterEnv:
      "POD_NAMESPACE=shop\n" +
      `ISTIO_METAJSON_LABELS='{"app.kubernetes.io/name":"cart","app.kubernetes.io/version":"v3","version":"v2"}'\n`,
    expect: [
      {
        upstream: CANONICAL_RULE,
        check: (n) => {
          expect(md(n)["LABELS"]).toMatchObject({
            "service.istio.io/canonical-name": "cart",
            "service.istio.io/canonical-revision": "v3",
          });
        },
      },
      // No `app` label and no workload name: serviceClusterOrDefault does not look at the canonical name.
      {
        upstream: CLUSTER_RULE,
        check: (n) => {
          expect(n.cluster).toBe("istio-proxy.shop");
        },
      },
    ],
  },
  {
    name: "explicit ISTIO_SERVICE (as istio-start.sh passes --serviceCluster)",
    clusterEnv: `POD_NAMESPACE=prod\nISTIO_METAJSON_LABELS='{"app":"billing"}'\n`,
    sidecarEnv: "ISTIO_SVC_IP=10.0.0.5\nISTIO_SERVICE=legacy-billing\n",
    expect: [
      {
        upstream: CLUSTER_RULE,
        check: (n) => {
          expect(n.cluster).toBe("legacy-billing");
        },
      },
      {
        upstream: MERGE_RULE,
        check: (n) => {
          expect(md(n)["PROXY_CONFIG"]).toMatchObject({ serviceCluster: "legacy-billing" });
        },
      },
    ],
  },
  {
    name: "the mesh sets tracingServiceName CANONICAL_NAME_AND_NAMESPACE",
    clusterEnv:
      "POD_NAMESPACE=shop\n" +
      `ISTIO_METAJSON_LABELS='{"app":"web","app.kubernetes.io/name":"storefront"}'\n` +
      `PROXY_CONFIG='{"tracingServiceName":"CANONICAL_NAME_AND_NAMESPACE"}'\n`,
    expect: [
      {
        upstream: CLUSTER_RULE,
        check: (n) => {
          expect(n.cluster).toBe("storefront.shop");
        },
      },
      {
        upstream: `${MERGE_RULE}: a oneof member replaces its sibling (serviceCluster)`,
        check: (n) => {
          expect(md(n)["PROXY_CONFIG"]).toMatchObject({ tracingServiceName: "CANONICAL_NAME_AND_NAMESPACE" });
          expect(md(n)["PROXY_CONFIG"]).not.toHaveProperty("serviceCluster");
        },
      },
    ],
  },
  {
    name: "tracingServiceName CANONICAL_NAME_ONLY with an explicit canonical-name label",
    clusterEnv:
      "POD_NAMESPACE=shop\n" +
      `ISTIO_METAJSON_LABELS='{"app":"web","service.istio.io/canonical-name":"frontend"}'\n` +
      `PROXY_CONFIG='{"tracingServiceName":"CANONICAL_NAME_ONLY"}'\n`,
    expect: [
      {
        upstream: CLUSTER_RULE,
        check: (n) => {
          expect(n.cluster).toBe("frontend");
        },
      },
    ],
  },
  {
    name: "the mesh's defaultConfig, then the VM's own PROXY_CONFIG overrides",
    clusterEnv:
      "POD_NAMESPACE=default\nISTIO_META_WORKLOAD_NAME=db\n" +
      `PROXY_CONFIG='{"concurrency":4,"tracing":{"sampling":10},"proxyMetadata":{"ISTIO_META_TEAM":"mesh","A":"1"}}'\n`,
    sidecarEnv:
      "ISTIO_SVC_IP=10.0.0.5\n" +
      `ISTIO_VM_PROXY_CONFIG='{"concurrency":1,"proxy_metadata":{"A":"2","B":"3"}}'\n` +
      "ISTIO_META_TEAM=vm\n",
    expect: [
      {
        upstream: `${MERGE_RULE}: fields replaced whole, proxyMetadata merged key by key (mergeMap)`,
        check: (n) => {
          expect(md(n)["PROXY_CONFIG"]).toMatchObject({
            concurrency: 1,
            tracing: { sampling: 10 },
            proxyMetadata: { ISTIO_META_TEAM: "mesh", A: "2", B: "3" },
            drainDuration: "45s",
          });
        },
      },
      {
        upstream: `GetNodeMetaData: proxyMetadata ISTIO_META_* first, the environment over it, ${CONFIG_GO}`,
        check: (n) => {
          expect(md(n)["TEAM"]).toBe("vm");
        },
      },
    ],
  },
  {
    name: "ISTIO_META_ISTIO_VERSION given, other metadata passed through, DNS capture",
    clusterEnv:
      "POD_NAMESPACE=default\nISTIO_VERSION=1.22.0\nISTIO_META_DNS_CAPTURE=true\n" +
      `ISTIO_METAJSON_ANNOTATIONS_EXTRA='{"ANNOTATIONS":{"owner":"ops"}}'\n`,
    env: { ISTIO_META_ISTIO_VERSION: "1.24.1", ISTIO_META_OWNER: "team-a" },
    expect: [
      {
        upstream: `SetIstioVersion (only when ISTIO_META_ISTIO_VERSION did not set it), ${CONFIG_GO}`,
        check: (n) => {
          expect(md(n)["ISTIO_VERSION"]).toBe("1.24.1");
        },
      },
      {
        upstream: META_RULE,
        check: (n) => {
          expect(md(n)["OWNER"]).toBe("team-a");
        },
      },
      {
        upstream: `GetNodeMetaData: ISTIO_METAJSON_* merged at the top level, ${CONFIG_GO}`,
        check: (n) => {
          expect(md(n)["ANNOTATIONS"]).toEqual({ owner: "ops" });
        },
      },
      {
        upstream: `GetNodeMetaData: ISTIO_META_DNS_CAPTURE → DNS_CAPTURE, ${CONFIG_GO}; istiod's NDS needs it (pilot/pkg/xds/nds.go)`,
        check: (n) => {
          expect(md(n)["DNS_CAPTURE"]).toBe("true");
        },
      },
    ],
  },
  {
    name: "plain text to istiod (CONTROL_PLANE_AUTH_POLICY=NONE), stats and status listeners off",
    clusterEnv: "POD_NAMESPACE=default\nCONTROL_PLANE_AUTH_POLICY=NONE\n",
    sidecarEnv: "ISTIO_SVC_IP=10.0.0.5\nENVOY_STATS_PORT=0\nENVOY_STATUS_PORT=0\n",
    expect: [
      {
        upstream: "Agent.generateNodeMetadata: no PILOT_SAN without MUTUAL_TLS, pkg/istio-agent/agent.go (1.24)",
        check: (n) => {
          expect(md(n)["PILOT_SAN"]).toBeUndefined();
        },
      },
      {
        upstream:
          "NodeMetadata ENVOY_STATUS_PORT / ENVOY_PROMETHEUS_PORT are omitempty ints, pkg/model/proxy.go (1.24)",
        check: (n) => {
          expect(md(n)["ENVOY_STATUS_PORT"]).toBeUndefined();
          expect(md(n)["ENVOY_PROMETHEUS_PORT"]).toBeUndefined();
        },
      },
      {
        upstream: MERGE_RULE,
        check: (n) => {
          expect(md(n)["PROXY_CONFIG"]).toMatchObject({
            controlPlaneAuthPolicy: "NONE",
            discoveryAddress: "istiod.istio-system.svc:15010",
          });
        },
      },
    ],
  },
];

describe("buildNodeBlock (istiod profile): the node pilot-agent would send", () => {
  for (const row of ROWS) {
    describe(row.name, () => {
      for (const e of row.expect) {
        it(e.upstream, async () => {
          const { block } = await nodeFor(`ISTIO_CONTROL_PLANE=istiod\n${row.clusterEnv}`, row.sidecarEnv, row.env);
          e.check(block);
        });
      }
    });
  }

  it("metadata keys are sorted, as Go's encoding/json writes a map (pkg/bootstrap/config.go ConvertNodeToXDSNode)", async () => {
    const { block } = await nodeFor(
      `ISTIO_CONTROL_PLANE=istiod\nISTIO_METAJSON_LABELS='{"app":"x","zeta":"1","alpha":"2"}'\n`,
    );
    const keys = Object.keys(block.metadata);
    expect(keys).toEqual([...keys].sort());
    expect(Object.keys(block.metadata["LABELS"] as object)).toEqual(
      Object.keys(block.metadata["LABELS"] as object).sort(),
    );
  });

  it("the probe stream and Envoy present the same node, less AUTO_REGISTER_GROUP on the probe", async () => {
    const { block, loaded, extraMetadata } = await nodeFor(
      "ISTIO_CONTROL_PLANE=istiod\nISTIO_META_AUTO_REGISTER_GROUP=wg\nISTIO_META_WORKLOAD_NAME=wg\n",
    );
    const probe = probeNode(loaded.values, HOSTNAME, extraMetadata, "0.1.0");
    expect(block.metadata["AUTO_REGISTER_GROUP"]).toBe("wg");
    expect(probe.metadata["AUTO_REGISTER_GROUP"]).toBeUndefined();
    const rest = Object.fromEntries(Object.entries(block.metadata).filter(([k]) => k !== "AUTO_REGISTER_GROUP"));
    expect(probe).toMatchObject({ id: block.id, cluster: block.cluster, metadata: rest, user_agent_name: "istio-vm" });
  });
});

describe("buildNodeBlock (legacy profile): unchanged", () => {
  it("cluster is ISTIO_SERVICE (rawvm), metadata as pilot-agent 0.8 sent it, istio: sidecar", async () => {
    const { block } = await nodeFor("ISTIO_CONTROL_PLANE=legacy\n", "ISTIO_SVC_IP=10.0.0.5\nPOD_NAME=vm-1\n");
    expect(block).toEqual({
      id: "sidecar~10.0.0.5~vm-1.default~default.svc.cluster.local",
      cluster: "rawvm",
      metadata: {
        NAME: "vm-1",
        NAMESPACE: "default",
        SERVICE_ACCOUNT: "default",
        INSTANCE_IPS: "10.0.0.5",
        INTERCEPTION_MODE: "REDIRECT",
        CLUSTER_ID: "Kubernetes",
        ENVOY_PROMETHEUS_PORT: "15090",
        istio: "sidecar",
      },
    });
  });
});

describe("the pieces", () => {
  it("CanonicalService: canonical-name > app.kubernetes.io/name > app > workload name; revision default latest", () => {
    expect(canonicalService({ app: "a", "app.kubernetes.io/name": "b" }, "w")).toEqual({
      name: "b",
      revision: "latest",
    });
    expect(canonicalService({}, "w")).toEqual({ name: "w", revision: "latest" });
    expect(canonicalService({ version: "v1", "service.istio.io/canonical-revision": "r" }, "w").revision).toBe("r");
  });

  it("ApplyProxyConfig: null unsets a field; snake_case names are the same fields", () => {
    const pc = applyProxyConfig(ISTIO_DEFAULT_PROXY_CONFIG, { tracing: null, status_port: 15999 });
    expect(pc).not.toHaveProperty("tracing");
    expect(pc["statusPort"]).toBe(15999);
  });
});
