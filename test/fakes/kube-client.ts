/**
 * A KubeClient backed by the dev plane's ObjectStore, for unit tests and benchmarks: it parses API paths the way the
 * API server routes them, returns Kubernetes-shaped errors (KubeApiError with status and reason), honours `dryRun`
 * (validates, never persists), answers the TokenRequest subresource, and rejects a Service whose clusterIP lies
 * outside the configured service range with the API server's own wording. Every request is recorded in `requests`.
 */
import { isIP } from "node:net";
import type { KubeObject } from "../../src/devplane/store.js";
import { ObjectStore, StoreError } from "../../src/devplane/store.js";
import type { KubeClient, KubeObjectList, RequestOptions } from "../../src/kube/client.js";
import { KubeApiError } from "../../src/kube/client.js";
import { parseCidr } from "../../src/config/types.js";
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
  /** Service ranges the fake API server allocates from (for the clusterIP range check), e.g. ["10.96.0.0/12"]. */
  readonly serviceRanges?: readonly string[];
  /**
   * Called before every request; may throw a KubeApiError to simulate RBAC denials, outages or conflicts. It runs
   * before the store is touched.
   */
  readonly intercept?: (request: RecordedRequest) => void;
}

interface ParsedPath {
  readonly resource: string;
  readonly namespace: string | undefined;
  readonly name: string | undefined;
  readonly subresource: string | undefined;
}

/** `/api/v1/namespaces/NS/services/NAME[/SUB]`, `/apis/G/V/namespaces/NS/R/NAME`, `/apis/G/V/R/NAME` (cluster). */
export function parseApiPath(path: string): ParsedPath {
  const clean = path.split("?")[0] ?? "";
  const parts = clean.split("/").filter((p) => p !== "");
  let rest: string[];
  if (parts[0] === "api" && parts.length >= 2) rest = parts.slice(2);
  else if (parts[0] === "apis" && parts.length >= 3) rest = parts.slice(3);
  else throw new Error(`fake kube client: unsupported path ${path}`);
  if (rest[0] === "namespaces" && rest.length >= 3) {
    return { namespace: rest[1], resource: rest[2] ?? "", name: rest[3], subresource: rest[4] };
  }
  if (rest[0] === "namespaces")
    return { namespace: undefined, resource: "namespaces", name: rest[1], subresource: undefined };
  return { namespace: undefined, resource: rest[0] ?? "", name: rest[1], subresource: rest[2] };
}

const STATUS: Record<StoreError["reason"], number> = { NotFound: 404, AlreadyExists: 409, Conflict: 409, Invalid: 422 };

function apiError(status: number, reason: string, message: string, subject: string): KubeApiError {
  return new KubeApiError({ status, reason, message, subject });
}

function ipToBigInt(ip: string): bigint {
  const cidr = parseCidr(ip.includes(":") ? `${ip}/128` : `${ip}/32`);
  // parseCidr validated it; reuse the address text to compute the value.
  if (cidr.family === 4) return cidr.address.split(".").reduce((a, o) => (a << 8n) | BigInt(Number(o)), 0n);
  const [head = "", tail] = cidr.address.toLowerCase().split("::");
  const h = head === "" ? [] : head.split(":");
  const t = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups = [...h, ...Array<string>(tail === undefined ? 0 : 8 - h.length - t.length).fill("0"), ...t];
  return groups.reduce((a, g) => (a << 16n) | BigInt(parseInt(g, 16)), 0n);
}

function inRange(ip: string, range: string): boolean {
  const cidr = parseCidr(range);
  if (isIP(ip) !== cidr.family) return false;
  const bits = cidr.family === 4 ? 32 : 128;
  const shift = BigInt(bits - cidr.prefix);
  return ipToBigInt(ip) >> shift === ipToBigInt(cidr.address) >> shift;
}

/** Runs `fn` and turns a throw into a rejected promise, as a real asynchronous client would. */
function settle<T>(fn: () => T): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (error) {
    return Promise.reject(error instanceof Error ? error : new Error(String(error)));
  }
}

export class FakeKubeClient implements KubeClient {
  readonly store: ObjectStore;
  readonly namespace: string;
  readonly server = "https://fake.invalid";
  readonly requests: RecordedRequest[] = [];
  readonly #ranges: readonly string[];
  readonly #intercept: ((request: RecordedRequest) => void) | undefined;
  #tokens = 0;

  constructor(options: FakeKubeClientOptions = {}) {
    this.store = options.store ?? new ObjectStore();
    this.namespace = options.namespace ?? "default";
    this.#ranges = options.serviceRanges ?? ["10.96.0.0/12"];
    this.#intercept = options.intercept;
  }

  #record(verb: Verb, path: string, options: RequestOptions | undefined): void {
    const request = { verb, path, dryRun: options?.dryRun === true };
    this.requests.push(request);
    this.#intercept?.(request);
  }

  #wrap<T>(subject: string, fn: () => T): T {
    try {
      return fn();
    } catch (error) {
      if (error instanceof StoreError) throw apiError(STATUS[error.reason], error.reason, error.message, subject);
      throw error;
    }
  }

  get<T>(path: string, options?: RequestOptions): Promise<T> {
    return settle(() => {
      this.#record("get", path, options);
      const p = parseApiPath(path);
      const name = p.name;
      if (name === undefined) throw new Error(`fake kube client: get without a name: ${path}`);
      return this.#wrap(path, () => this.store.get(p.resource, p.namespace, name) as T);
    });
  }

  list<T>(path: string, options?: RequestOptions): Promise<KubeObjectList<T>> {
    return settle(() => {
      this.#record("list", path, options);
      const p = parseApiPath(path);
      const items = this.store.list(p.resource, p.namespace) as T[];
      return { items, metadata: { resourceVersion: this.store.resourceVersion } };
    });
  }

  create<T>(path: string, body: unknown, options?: RequestOptions): Promise<T> {
    return settle(() => {
      this.#record("create", path, options);
      return this.#create(path, body, options?.dryRun === true) as T;
    });
  }

  #create(path: string, body: unknown, dryRun: boolean): unknown {
    const p = parseApiPath(path);
    if (p.subresource === "token" && p.resource === "serviceaccounts" && p.name !== undefined) {
      const sa = p.name;
      this.#wrap(path, () => this.store.get("serviceaccounts", p.namespace, sa));
      const spec = (body as { spec?: { audiences?: string[]; expirationSeconds?: number } }).spec ?? {};
      const seconds = spec.expirationSeconds ?? 3600;
      const claims = {
        aud: spec.audiences ?? [],
        sub: `system:serviceaccount:${p.namespace ?? ""}:${sa}`,
        exp: Math.floor(Date.now() / 1000) + seconds,
      };
      const token = [{ alg: "none" }, claims, { n: ++this.#tokens }]
        .map((part) => Buffer.from(JSON.stringify(part)).toString("base64url"))
        .join(".");
      return {
        apiVersion: "authentication.k8s.io/v1",
        kind: "TokenRequest",
        spec,
        status: { token, expirationTimestamp: new Date(claims.exp * 1000).toISOString().replace(/\.\d+Z$/, "Z") },
      };
    }
    const object = structuredClone(body) as KubeObject;
    if (p.namespace !== undefined) object.metadata.namespace = p.namespace;
    if (p.resource === "services") this.#allocateClusterIp(object, path);
    if (dryRun) {
      if (this.store.tryGet(p.resource, p.namespace, object.metadata.name) !== undefined) {
        throw apiError(409, "AlreadyExists", `${p.resource} "${object.metadata.name}" already exists`, path);
      }
      return object;
    }
    return this.#wrap(path, () => this.store.create(p.resource, object));
  }

  #allocateClusterIp(object: KubeObject, path: string): void {
    const spec = (object["spec"] ?? {}) as { clusterIP?: string; clusterIPs?: string[] };
    const requested = spec.clusterIP;
    if (requested !== undefined && requested !== "" && requested !== "None") {
      if (!this.#ranges.some((r) => inRange(requested, r))) {
        const family = isIP(requested);
        const valid = this.#ranges.filter((r) => parseCidr(r).family === family);
        const message =
          valid.length === 0
            ? `Service "${object.metadata.name}" is invalid: spec.clusterIPs[0]: Invalid value: "${requested}": IPv${family} is not configured on this cluster`
            : `Service "${object.metadata.name}" is invalid: spec.clusterIPs: Invalid value: ["${requested}"]: failed to allocate IP ${requested}: the provided IP (${requested}) is not in the valid range. The range of valid IPs is ${valid.join(",")}`;
        throw apiError(422, "Invalid", message, path);
      }
      return;
    }
    const first = this.#ranges[0];
    if (first !== undefined && parseCidr(first).family === 4) {
      const base = parseCidr(first).address.split(".").map(Number);
      const n = this.store.list("services").length + 10;
      spec.clusterIP = `${base[0] ?? 10}.${base[1] ?? 96}.${(n >> 8) & 255}.${n & 255}`;
      object["spec"] = spec;
    }
  }

  update<T>(path: string, body: unknown, options?: RequestOptions): Promise<T> {
    return settle(() => {
      this.#record("update", path, options);
      const p = parseApiPath(path);
      const object = structuredClone(body) as KubeObject;
      if (p.namespace !== undefined) object.metadata.namespace = p.namespace;
      return this.#wrap(path, () => {
        if (options?.dryRun !== true) return this.store.update(p.resource, object) as T;
        const current = this.store.get(p.resource, p.namespace, object.metadata.name);
        const expected = object.metadata.resourceVersion;
        if (expected !== undefined && expected !== "" && expected !== current.metadata.resourceVersion) {
          throw new StoreError("Conflict", `Operation cannot be fulfilled on ${p.resource} "${object.metadata.name}"`);
        }
        return object as T;
      });
    });
  }

  delete(path: string, options?: RequestOptions): Promise<void> {
    return settle(() => {
      this.#record("delete", path, options);
      const p = parseApiPath(path);
      const name = p.name;
      if (name === undefined) throw new Error(`fake kube client: delete without a name: ${path}`);
      this.#wrap(path, () => {
        if (options?.dryRun === true) this.store.get(p.resource, p.namespace, name);
        else this.store.delete(p.resource, p.namespace, name);
      });
    });
  }
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
