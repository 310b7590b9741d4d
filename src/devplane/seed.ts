/**
 * The objects of a mesh-expansion-shaped cluster, per control-plane generation (istio/istio
 * install/kubernetes/mesh-expansion.yaml at 0.2.12–0.8.0, and istiod's Services; docs/protocols.md):
 * - both: namespaces default, kube-system, kube-public; Service `kubernetes` (the CIDR's first address) and `kube-dns`
 *   (its tenth); the ServiceCIDR `kubernetes` unless the API is switched off.
 * - legacy: istio-system with istio-pilot, istio-mixer, istio-ca (ClusterIP) and the internal load balancers
 *   istio-pilot-ilb, mixer-ilb, istio-ca-ilb (istio-system) and dns-ilb (kube-system), with their service accounts
 *   (the controllers give each an `istio.<sa>` secret).
 * - istiod: istio-system with istiod (15010/15012/443/15014), the east-west gateway (LoadBalancer) and the
 *   ConfigMaps istioctl reads (istio, istio-sidecar-injector), and the istiod Deployment (its image tag is the version).
 * Load-balancer addresses are pinned from a base in a fixed order, so generated files are predictable: legacy
 * dns-ilb = base, mixer-ilb = base+1, istio-pilot-ilb = base+2, istio-ca-ilb = base+3 (the reference's example
 * 10.128.0.6–9); istiod istio-eastwestgateway = base.
 */
import { bigIntToIp, ipToBigInt } from "./ip-allocator.js";
import type { Cidr } from "./ip-allocator.js";
import type { KubeApi } from "./kube-api.js";
import type { KubeObject } from "./store.js";

export type Profile = "legacy" | "istiod" | "none";
export const PROFILES: readonly Profile[] = ["legacy", "istiod", "none"];

export const ISTIO_NAMESPACE = "istio-system";
/** The Istio release the dev plane stands in for (its istiod Deployment's image tag). */
export const DEV_ISTIO_VERSION = "1.24.2";
const ILB_ANNOTATIONS = {
  "cloud.google.com/load-balancer-type": "internal",
  "networking.gke.io/load-balancer-type": "Internal",
};

type Port = { name: string; port: number; protocol?: "TCP" | "UDP"; targetPort?: number };

function service(options: {
  name: string;
  namespace: string;
  ports: Port[];
  selector: Record<string, string>;
  type?: "ClusterIP" | "LoadBalancer";
  clusterIP?: string | undefined;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}): KubeObject {
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: {
      name: options.name,
      namespace: options.namespace,
      ...(options.labels === undefined ? {} : { labels: options.labels }),
      ...(options.annotations === undefined ? {} : { annotations: options.annotations }),
    },
    spec: {
      type: options.type ?? "ClusterIP",
      selector: options.selector,
      ports: options.ports.map((p) => ({ protocol: "TCP", targetPort: p.port, ...p })),
      ...(options.clusterIP === undefined ? {} : { clusterIP: options.clusterIP, clusterIPs: [options.clusterIP] }),
    },
  };
}

/** The load-balancer addresses of a profile's seeded services, "namespace/name" → IP. */
export function pinnedLoadBalancerIps(profile: Profile, base: string): Map<string, string> {
  const family = base.includes(":") ? 6 : 4;
  const start = ipToBigInt(base);
  const names =
    profile === "legacy"
      ? [
          "kube-system/dns-ilb",
          `${ISTIO_NAMESPACE}/mixer-ilb`,
          `${ISTIO_NAMESPACE}/istio-pilot-ilb`,
          `${ISTIO_NAMESPACE}/istio-ca-ilb`,
        ]
      : profile === "istiod"
        ? [`${ISTIO_NAMESPACE}/istio-eastwestgateway`]
        : [];
  return new Map(names.map((name, i) => [name, bigIntToIp(start + BigInt(i), family)]));
}

export function seedObjects(
  profile: Profile,
  options: { serviceCidrs: readonly Cidr[]; serviceCidrApi: boolean; trustDomain: string },
): {
  resource: string;
  object: KubeObject;
}[] {
  const first = options.serviceCidrs[0];
  const nth = (n: number): string | undefined =>
    first === undefined ? undefined : bigIntToIp(first.base + BigInt(n), first.family);
  const ns = (name: string, labels?: Record<string, string>): { resource: string; object: KubeObject } => ({
    resource: "namespaces",
    object: {
      apiVersion: "v1",
      kind: "Namespace",
      metadata: { name, labels: { "kubernetes.io/metadata.name": name, ...labels } },
    },
  });
  const svc = (o: Parameters<typeof service>[0]): { resource: string; object: KubeObject } => ({
    resource: "services",
    object: service(o),
  });
  const sa = (namespace: string, name: string): { resource: string; object: KubeObject } => ({
    resource: "serviceaccounts",
    object: { apiVersion: "v1", kind: "ServiceAccount", metadata: { name, namespace } },
  });
  /** A legacy component's ClusterIP Service in istio-system, labelled and selected by `istio: <component>`. */
  const component = (name: string, istio: string, ports: Port[]): { resource: string; object: KubeObject } =>
    svc({ name, namespace: ISTIO_NAMESPACE, selector: { istio }, labels: { istio }, ports });
  /** One of mesh-expansion.yaml's internal load balancers (`*-ilb`): a LoadBalancer with GKE's internal annotations. */
  const ilb = (
    name: string,
    namespace: string,
    selector: Record<string, string>,
    ports: Port[],
  ): { resource: string; object: KubeObject } =>
    svc({ name, namespace, type: "LoadBalancer", selector, annotations: ILB_ANNOTATIONS, ports });
  const objects = [
    ns("default"),
    ns("kube-system"),
    ns("kube-public"),
    svc({
      name: "kubernetes",
      namespace: "default",
      ports: [{ name: "https", port: 443, targetPort: 6443 }],
      selector: {},
      labels: { component: "apiserver", provider: "kubernetes" },
      clusterIP: nth(1),
    }),
    svc({
      name: "kube-dns",
      namespace: "kube-system",
      ports: [
        { name: "dns", port: 53, protocol: "UDP" },
        { name: "dns-tcp", port: 53 },
      ],
      selector: { "k8s-app": "kube-dns" },
      labels: { "k8s-app": "kube-dns", "kubernetes.io/name": "KubeDNS" },
      clusterIP: nth(10),
    }),
  ];
  if (options.serviceCidrApi) {
    objects.push({
      resource: "servicecidrs",
      object: {
        apiVersion: "networking.k8s.io/v1",
        kind: "ServiceCIDR",
        metadata: { name: "kubernetes" },
        spec: { cidrs: options.serviceCidrs.map((c) => c.text) },
        status: {
          conditions: [{ type: "Ready", status: "True", reason: "", message: "Kubernetes Service CIDR is ready" }],
        },
      },
    });
  }
  if (profile === "legacy") {
    objects.push(
      ns(ISTIO_NAMESPACE),
      sa(ISTIO_NAMESPACE, "istio-pilot-service-account"),
      sa(ISTIO_NAMESPACE, "istio-mixer-service-account"),
      sa(ISTIO_NAMESPACE, "istio-ca-service-account"),
      component("istio-pilot", "pilot", [
        { name: "http-discovery", port: 8080 },
        { name: "https-discovery", port: 15005 },
        { name: "grpc-xds", port: 15010 },
        { name: "https-xds", port: 15011 },
      ]),
      component("istio-mixer", "mixer", [
        { name: "grpc-mixer", port: 9091 },
        { name: "grpc-mixer-mtls", port: 15004 },
        { name: "http-monitoring", port: 9093 },
      ]),
      component("istio-ca", "istio-ca", [{ name: "grpc-ca", port: 8060 }]),
      ilb("istio-pilot-ilb", ISTIO_NAMESPACE, { istio: "pilot" }, [
        { name: "https-pilot", port: 15005 },
        { name: "http-pilot", port: 8080 },
        { name: "grpc-pilot", port: 15010 },
        { name: "tls-grpc-pilot", port: 15011 },
      ]),
      ilb("mixer-ilb", ISTIO_NAMESPACE, { istio: "mixer" }, [{ name: "grpc-mixer-mtls", port: 15004 }]),
      ilb("istio-ca-ilb", ISTIO_NAMESPACE, { istio: "istio-ca" }, [{ name: "grpc-ca", port: 8060 }]),
      ilb("dns-ilb", "kube-system", { "k8s-app": "kube-dns" }, [{ name: "dns", port: 53, protocol: "UDP" }]),
    );
  }
  if (profile === "istiod") {
    const discovery = `istiod.${ISTIO_NAMESPACE}.svc:15012`;
    objects.push(
      ns(ISTIO_NAMESPACE, { "topology.istio.io/network": "network1" }),
      sa(ISTIO_NAMESPACE, "istiod"),
      sa(ISTIO_NAMESPACE, "istio-eastwestgateway-service-account"),
      svc({
        name: "istiod",
        namespace: ISTIO_NAMESPACE,
        selector: { app: "istiod", istio: "pilot" },
        labels: { app: "istiod", istio: "pilot" },
        ports: [
          { name: "grpc-xds", port: 15010 },
          { name: "https-dns", port: 15012 },
          { name: "https-webhook", port: 443, targetPort: 15017 },
          { name: "http-monitoring", port: 15014 },
        ],
      }),
      svc({
        name: "istio-eastwestgateway",
        namespace: ISTIO_NAMESPACE,
        type: "LoadBalancer",
        selector: { istio: "eastwestgateway" },
        labels: { istio: "eastwestgateway", app: "istio-eastwestgateway", "topology.istio.io/network": "network1" },
        ports: [
          { name: "status-port", port: 15021 },
          { name: "tls", port: 15443 },
          { name: "tls-istiod", port: 15012 },
          { name: "tls-webhook", port: 15017 },
        ],
      }),
      {
        resource: "configmaps",
        object: {
          apiVersion: "v1",
          kind: "ConfigMap",
          metadata: { name: "istio", namespace: ISTIO_NAMESPACE, labels: { "istio.io/rev": "default" } },
          data: {
            // As `istioctl install` writes it: the proxies' defaults under defaultConfig (cluster-env copies them
            // into cluster.env as PROXY_CONFIG).
            mesh:
              `defaultConfig:\n  discoveryAddress: ${discovery}\n  holdApplicationUntilProxyStarts: true\n` +
              `  proxyMetadata:\n    ISTIO_META_DNS_CAPTURE: "true"\n  tracing:\n    sampling: 1\n` +
              `enablePrometheusMerge: true\nrootNamespace: ${ISTIO_NAMESPACE}\ntrustDomain: ${options.trustDomain}\n`,
            meshNetworks: "networks: {}\n",
          },
        },
      },
      {
        // istiod itself does not run in the dev plane (its protocols do); the Deployment is what cluster-env reads the
        // mesh's version from, as on a real cluster.
        resource: "deployments",
        object: {
          apiVersion: "apps/v1",
          kind: "Deployment",
          metadata: {
            name: "istiod",
            namespace: ISTIO_NAMESPACE,
            labels: { app: "istiod", istio: "pilot", "istio.io/rev": "default" },
          },
          spec: {
            replicas: 1,
            selector: { matchLabels: { app: "istiod", "istio.io/rev": "default" } },
            template: {
              metadata: { labels: { app: "istiod", istio: "pilot", "istio.io/rev": "default" } },
              spec: {
                serviceAccountName: "istiod",
                containers: [{ name: "discovery", image: `docker.io/istio/pilot:${DEV_ISTIO_VERSION}` }],
              },
            },
          },
        },
      },
      {
        resource: "configmaps",
        object: {
          apiVersion: "v1",
          kind: "ConfigMap",
          metadata: { name: "istio-sidecar-injector", namespace: ISTIO_NAMESPACE },
          data: {
            values: JSON.stringify({
              global: {
                meshID: "mesh1",
                multiCluster: { clusterName: "Kubernetes" },
                network: "network1",
                istioNamespace: ISTIO_NAMESPACE,
              },
            }),
          },
        },
      },
    );
  }
  return objects;
}

/** Creates the profile's objects through the API (so services get addresses and defaults as any client's would). */
export function seedCluster(api: KubeApi, objects: readonly { resource: string; object: KubeObject }[]): void {
  for (const { resource, object } of objects) {
    const def = api.def(resource);
    api.create(
      {
        def,
        namespace: def.namespaced ? object.metadata.namespace : undefined,
        name: undefined,
        subresource: undefined,
      },
      object,
    );
  }
}
