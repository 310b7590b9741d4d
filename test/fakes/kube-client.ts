/**
 * A KubeClient over the dev API server's semantics, in process: the same `KubeApi` (kube-apiserver's validation,
 * defaults, clusterIP allocation and messages, dry run, TokenRequest) and the same path parser that `istio-vm dev`
 * serves over HTTPS, with its `Status` errors turned into `KubeApiError`s by the real client's own `statusError`. So
 * the fake and the dev server cannot disagree; only HTTP, authentication and RBAC are left out (`intercept` stands in
 * for denials and outages). A fresh store gets the `default` namespace, which every cluster has. Every request is
 * recorded in `requests`.
 */
import type { KubeObject } from "../../src/devplane/store.js";
import { ObjectStore } from "../../src/devplane/store.js";
import { ClusterIpAllocator, parseCidr } from "../../src/devplane/ip-allocator.js";
import { KubeApi, resolveTarget } from "../../src/devplane/kube-api.js";
import type { Target } from "../../src/devplane/kube-api.js";
import { ApiStatusError, pathNotFound } from "../../src/devplane/kube-status.js";
import { createServiceAccountTokens } from "../../src/devplane/sa-tokens.js";
import type { KubeClient, KubeObjectList, RequestOptions } from "../../src/kube/client.js";
import { statusError } from "../../src/kube/api-errors.js";
import type { MeshCa } from "../../src/devplane/mesh-ca.js";
import { createMeshCa } from "../../src/devplane/mesh-ca.js";
import type { Clock } from "../../src/platform/clock.js";

export type Verb = "get" | "list" | "create" | "update" | "delete";

export interface RecordedRequest {
  readonly verb: Verb;
  readonly path: string;
  readonly dryRun: boolean;
}

export interface FakeKubeClientOptions {
  readonly store?: ObjectStore;
  readonly namespace?: string;
  /** The service CIDRs the API allocates clusterIPs from, e.g. ["10.96.0.0/12"] (the default). */
  readonly serviceRanges?: readonly string[];
  /**
   * Called before every request; may throw a KubeApiError to simulate RBAC denials, outages or conflicts. It runs
   * before the store is touched.
   */
  readonly intercept?: (request: RecordedRequest) => void;
}

const METHODS: Record<Verb, string> = { get: "GET", list: "GET", create: "POST", update: "PUT", delete: "DELETE" };

export class FakeKubeClient implements KubeClient {
  readonly store: ObjectStore;
  readonly namespace: string;
  readonly server = "https://fake.invalid";
  readonly requests: RecordedRequest[] = [];
  readonly #api: KubeApi;
  readonly #intercept: ((request: RecordedRequest) => void) | undefined;

  constructor(options: FakeKubeClientOptions = {}) {
    this.store = options.store ?? new ObjectStore();
    this.namespace = options.namespace ?? "default";
    this.#intercept = options.intercept;
    if (this.store.tryGet("namespaces", undefined, "default") === undefined) {
      this.store.create("namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name: "default" } });
    }
    this.#api = new KubeApi({
      store: this.store,
      allocator: new ClusterIpAllocator((options.serviceRanges ?? ["10.96.0.0/12"]).map((r) => parseCidr(r))),
      tokens: createServiceAccountTokens(),
    });
  }

  /** Records the request, then answers it as the dev API server would; a rejected promise as a real client's. */
  #serve<T>(verb: Verb, path: string, options: RequestOptions | undefined, answer: (target: Target) => T): Promise<T> {
    const request = { verb, path, dryRun: options?.dryRun === true };
    this.requests.push(request);
    try {
      this.#intercept?.(request);
      const target = resolveTarget(this.#api, path);
      if (target === undefined) throw pathNotFound();
      return Promise.resolve(answer(target));
    } catch (error) {
      if (!(error instanceof ApiStatusError)) {
        return Promise.reject(error instanceof Error ? error : new Error(String(error)));
      }
      const body = JSON.stringify(error.toStatus());
      return Promise.reject(
        statusError({ method: METHODS[verb], path, status: error.code, body, server: this.server }),
      );
    }
  }

  get<T>(path: string, options?: RequestOptions): Promise<T> {
    return this.#serve("get", path, options, (target) => this.#api.get(target) as T);
  }

  list<T>(path: string, options?: RequestOptions): Promise<KubeObjectList<T>> {
    const query = new URLSearchParams(path.split("?")[1] ?? "");
    return this.#serve("list", path, options, (target) => {
      const { items, resourceVersion } = this.#api.list(target, {
        labelSelector: query.get("labelSelector"),
        fieldSelector: query.get("fieldSelector"),
      });
      return { items: items as T[], metadata: { resourceVersion } };
    });
  }

  create<T>(path: string, body: unknown, options?: RequestOptions): Promise<T> {
    return this.#serve("create", path, options, (target) => this.#api.create(target, body, dry(options)) as T);
  }

  update<T>(path: string, body: unknown, options?: RequestOptions): Promise<T> {
    return this.#serve("update", path, options, (target) => this.#api.update(target, body, dry(options)) as T);
  }

  async delete(path: string, options?: RequestOptions): Promise<void> {
    await this.#serve("delete", path, options, (target) => this.#api.delete(target, dry(options)));
  }
}

function dry(options: RequestOptions | undefined): { dryRun: boolean } {
  return { dryRun: options?.dryRun === true };
}

/** A Clock whose sleep returns at once after advancing time; `onSleep` lets a test change the world meanwhile. */
export class SteppingClock implements Clock {
  time: number;
  readonly sleeps: number[] = [];
  onSleep: ((ms: number) => void) | undefined;

  constructor(start = Date.parse("2026-01-01T00:00:00Z")) {
    this.time = start;
  }
  now(): number {
    return this.time;
  }
  monotonic(): number {
    return this.time;
  }
  sleep(ms: number): Promise<void> {
    this.sleeps.push(ms);
    this.time += ms;
    this.onSleep?.(ms);
    return Promise.resolve();
  }
}

export function lbService(namespace: string, name: string, ip?: string): KubeObject {
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: { name, namespace },
    spec: { type: "LoadBalancer", ports: [{ port: 1, protocol: "TCP" }] },
    status: { loadBalancer: ip === undefined ? {} : { ingress: [{ ip }] } },
  };
}

function clusterService(namespace: string, name: string): KubeObject {
  return { apiVersion: "v1", kind: "Service", metadata: { name, namespace }, spec: { type: "ClusterIP", ports: [] } };
}

export interface SeedOptions {
  /** Workload namespace and service account that get credentials (default default/default). */
  readonly namespace?: string;
  readonly serviceAccount?: string;
  /** Publish the ServiceCIDR object `kubernetes` with these CIDRs (istiod seed default: dual stack). */
  readonly serviceCidrs?: readonly string[] | null;
}

export const LEGACY_ADDRESSES = { dns: "10.128.0.6", mixer: "10.128.0.7", pilot: "10.128.0.8", ca: "10.128.0.9" };
export const ISTIOD_ADDRESSES = { gateway: "192.0.2.10", dns: "192.0.2.53" };

function seedNamespaces(store: ObjectStore, names: readonly string[]): void {
  for (const name of names) {
    if (store.tryGet("namespaces", undefined, name) === undefined) {
      store.create("namespaces", { apiVersion: "v1", kind: "Namespace", metadata: { name } });
    }
  }
}

/** An Istio 0.x mesh-expansion cluster: the four ILBs with addresses, istio-pilot, and istio.<sa> with real certs. */
export async function seedLegacyCluster(store: ObjectStore, options: SeedOptions = {}): Promise<MeshCa> {
  const ns = options.namespace ?? "default";
  const sa = options.serviceAccount ?? "default";
  seedNamespaces(store, ["istio-system", "kube-system", ns]);
  store.create("services", clusterService("istio-system", "istio-pilot"));
  store.create("services", lbService("kube-system", "dns-ilb", LEGACY_ADDRESSES.dns));
  store.create("services", lbService("istio-system", "mixer-ilb", LEGACY_ADDRESSES.mixer));
  store.create("services", lbService("istio-system", "istio-pilot-ilb", LEGACY_ADDRESSES.pilot));
  store.create("services", lbService("istio-system", "istio-ca-ilb", LEGACY_ADDRESSES.ca));
  store.create("serviceaccounts", { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: sa, namespace: ns } });
  const ca = await createMeshCa({ keyAlgorithm: "ec-p256" });
  const pair = await ca.issueKeyPair({ identity: ca.spiffeId(ns, sa), ttlMs: 19 * 3600_000 });
  store.create("secrets", legacySecret(ns, sa, { root: ca.rootCertPem, chain: pair.chainPem, key: pair.keyPem }));
  if (options.serviceCidrs !== undefined && options.serviceCidrs !== null) seedServiceCidr(store, options.serviceCidrs);
  return ca;
}

export function legacySecret(ns: string, sa: string, pems: { root: string; chain: string; key: string }): KubeObject {
  const b64 = (text: string): string => Buffer.from(text).toString("base64");
  return {
    apiVersion: "v1",
    kind: "Secret",
    type: "istio.io/key-and-cert",
    metadata: { name: `istio.${sa}`, namespace: ns, annotations: { "istio.io/service-account.name": sa } },
    data: { "root-cert.pem": b64(pems.root), "cert-chain.pem": b64(pems.chain), "key.pem": b64(pems.key) },
  };
}

export function seedServiceCidr(store: ObjectStore, cidrs: readonly string[]): void {
  store.create("servicecidrs", {
    apiVersion: "networking.k8s.io/v1",
    kind: "ServiceCIDR",
    metadata: { name: "kubernetes" },
    spec: { cidrs: [...cidrs] },
  });
}

/** An Istio 1.x cluster: istiod, the east-west gateway, the root ConfigMap, mesh config, a dual-stack ServiceCIDR. */
export async function seedIstiodCluster(store: ObjectStore, options: SeedOptions = {}): Promise<MeshCa> {
  const ns = options.namespace ?? "default";
  const sa = options.serviceAccount ?? "default";
  seedNamespaces(store, ["istio-system", "kube-system", ns]);
  store.create("services", clusterService("istio-system", "istiod"));
  store.create("services", lbService("istio-system", "istio-eastwestgateway", ISTIOD_ADDRESSES.gateway));
  store.create("serviceaccounts", { apiVersion: "v1", kind: "ServiceAccount", metadata: { name: sa, namespace: ns } });
  const ca = await createMeshCa({ keyAlgorithm: "ec-p256" });
  store.create("configmaps", {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: "istio-ca-root-cert", namespace: ns },
    data: { "root-cert.pem": ca.rootCertPem },
  });
  store.create("configmaps", {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: "istio-sidecar-injector", namespace: "istio-system" },
    data: {
      values: JSON.stringify({ global: { meshID: "mesh1", network: "vm-net", multiCluster: { clusterName: "east" } } }),
    },
  });
  store.create("configmaps", {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: "istio", namespace: "istio-system" },
    data: { mesh: "defaultConfig:\n  discoveryAddress: istiod.istio-system.svc:15012\ntrustDomain: example.org\n" },
  });
  store.create("deployments", {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: "istiod", namespace: "istio-system", labels: { app: "istiod" } },
    spec: { template: { spec: { containers: [{ name: "discovery", image: "docker.io/istio/pilot:1.24.2" }] } } },
  });
  const cidrs = options.serviceCidrs === undefined ? ["10.96.0.0/12", "fd00:10:96::/112"] : options.serviceCidrs;
  if (cidrs !== null) seedServiceCidr(store, cidrs);
  return ca;
}
