/**
 * The controllers a real cluster runs that the admin commands depend on, as store watchers:
 * - namespaces: the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap (kube-controller-manager); with the
 *   istiod profile also `istio-ca-root-cert` (istiod's namespace controller).
 * - legacy profile: a `istio.<sa>` Secret (type istio.io/key-and-cert) with a real key and certificate for every
 *   ServiceAccount (Citadel's secret controller, Istio 0.2–0.8).
 * - a cloud load-balancer controller: a Service of type LoadBalancer gets `status.loadBalancer.ingress[0].ip` after
 *   `delayMs` (so clients can be tested against "pending"), from pinned addresses or a pool.
 * `idle()` resolves when every triggered piece of work has finished (seeding waits for it before "ready").
 */
import { bigIntToIp, ipToBigInt } from "./ip-allocator.js";
import type { KubeApi } from "./kube-api.js";
import { ApiStatusError } from "./kube-status.js";
import type { KeyAlgorithm, MeshCa } from "./mesh-ca.js";
import type { KubeObject, StoreEvent } from "./store.js";

export interface ControllerOptions {
  readonly api: KubeApi;
  readonly meshCa: MeshCa;
  /** PEM of the cluster CA (kube-root-ca.crt). */
  readonly clusterCaPem: string;
  readonly profile: "legacy" | "istiod" | "none";
  /** Lifetime of the istio.<sa> workload certificates (legacy). */
  readonly workloadCertTtlMs: number;
  readonly workloadKeyAlgorithm?: KeyAlgorithm;
  readonly lb: {
    readonly delayMs: number;
    /** First address of the pool for services without a pinned address. */
    readonly poolBase: string;
    /** "namespace/name" → address. */
    readonly pinned: ReadonlyMap<string, string>;
  };
  readonly onError?: (message: string, error: unknown) => void;
}

export interface Controllers {
  idle(): Promise<void>;
  close(): void;
}

const SYSTEM = { dryRun: false } as const;

function b64(text: string): string {
  return Buffer.from(text).toString("base64");
}

export function startControllers(options: ControllerOptions): Controllers {
  const { api } = options;
  const pending = new Set<Promise<unknown>>();
  const timers = new Set<NodeJS.Timeout>();
  let closed = false;
  const usedLbIps = new Set<string>(options.lb.pinned.values());
  let poolNext = ipToBigInt(options.lb.poolBase) + BigInt(options.lb.pinned.size);
  const family = options.lb.poolBase.includes(":") ? 6 : 4;

  const track = (work: () => Promise<unknown>, what: string): void => {
    const promise = work()
      .catch((error: unknown) => {
        if (!closed) options.onError?.(what, error);
      })
      .finally(() => pending.delete(promise));
    pending.add(promise);
  };

  const createIfMissing = (resource: string, namespace: string | undefined, object: KubeObject): void => {
    if (api.store.tryGet(resource, namespace, object.metadata.name) !== undefined) return;
    const def = api.def(resource);
    try {
      api.create({ def, namespace, name: undefined, subresource: undefined }, object, SYSTEM);
    } catch (error) {
      if (!(error instanceof ApiStatusError && error.reason === "AlreadyExists")) throw error;
    }
  };

  const onNamespace = (ns: string): void => {
    createIfMissing("serviceaccounts", ns, {
      apiVersion: "v1",
      kind: "ServiceAccount",
      metadata: { name: "default", namespace: ns },
    });
    createIfMissing("configmaps", ns, {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { name: "kube-root-ca.crt", namespace: ns },
      data: { "ca.crt": options.clusterCaPem },
    });
    if (options.profile === "istiod") {
      createIfMissing("configmaps", ns, {
        apiVersion: "v1",
        kind: "ConfigMap",
        metadata: { name: "istio-ca-root-cert", namespace: ns, labels: { "istio.io/config": "true" } },
        data: { "root-cert.pem": options.meshCa.rootCertPem },
      });
    }
  };

  const onServiceAccount = (sa: KubeObject): void => {
    const ns = sa.metadata.namespace ?? "default";
    const name = `istio.${sa.metadata.name}`;
    if (api.store.tryGet("secrets", ns, name) !== undefined) return;
    track(async () => {
      const pair = await options.meshCa.issueKeyPair({
        identity: options.meshCa.spiffeId(ns, sa.metadata.name),
        ttlMs: options.workloadCertTtlMs,
        keyAlgorithm: options.workloadKeyAlgorithm ?? "rsa-2048",
      });
      if (closed || api.store.tryGet("serviceaccounts", ns, sa.metadata.name) === undefined) return;
      createIfMissing("secrets", ns, {
        apiVersion: "v1",
        kind: "Secret",
        type: "istio.io/key-and-cert",
        metadata: { name, namespace: ns, annotations: { "istio.io/service-account.name": sa.metadata.name } },
        data: {
          "cert-chain.pem": b64(pair.chainPem),
          "key.pem": b64(pair.keyPem),
          "root-cert.pem": b64(options.meshCa.rootCertPem),
        },
      });
    }, `issuing secret ${ns}/${name}`);
  };

  const nextPoolIp = (): string => {
    for (;;) {
      const ip = bigIntToIp(poolNext++, family);
      if (!usedLbIps.has(ip)) return ip;
    }
  };

  const onLoadBalancer = (service: KubeObject): void => {
    const key = `${service.metadata.namespace ?? ""}/${service.metadata.name}`;
    const ingress = (service["status"] as { loadBalancer?: { ingress?: unknown[] } } | undefined)?.loadBalancer
      ?.ingress;
    if (ingress !== undefined && ingress.length > 0) return;
    const ip = options.lb.pinned.get(key) ?? nextPoolIp();
    usedLbIps.add(ip);
    const assign = (): void => {
      const ns = service.metadata.namespace;
      const current = api.store.tryGet("services", ns, service.metadata.name);
      if (current === undefined || (current["spec"] as { type?: string } | undefined)?.type !== "LoadBalancer") return;
      api.update(
        { def: api.def("services"), namespace: ns, name: service.metadata.name, subresource: "status" },
        { ...current, status: { loadBalancer: { ingress: [{ ip, ipMode: "VIP" }] } } },
        SYSTEM,
      );
    };
    // Not tracked by idle(): "ready" must not wait for the load balancer, so clients can see it pending.
    const timer = setTimeout(() => {
      timers.delete(timer);
      try {
        assign();
      } catch (error) {
        if (!closed) options.onError?.(`assigning a load-balancer address to ${key}`, error);
      }
    }, options.lb.delayMs);
    timers.add(timer);
  };

  const onEvent = (event: StoreEvent): void => {
    if (closed || event.type === "DELETED") return;
    try {
      if (event.resource === "namespaces" && event.type === "ADDED") onNamespace(event.object.metadata.name);
      else if (event.resource === "serviceaccounts" && event.type === "ADDED" && options.profile === "legacy") {
        onServiceAccount(event.object);
      } else if (
        event.resource === "services" &&
        (event.object["spec"] as { type?: string } | undefined)?.type === "LoadBalancer"
      ) {
        onLoadBalancer(event.object);
      }
    } catch (error) {
      options.onError?.(`reacting to ${event.type} ${event.resource}/${event.object.metadata.name}`, error);
    }
  };

  const pendingLb = new Set<string>();
  const unsubscribe = api.store.watch((event) => {
    // An LB service is handled once per "pending" period; status updates re-trigger only while still pending.
    if (event.resource === "services") {
      const key = `${event.object.metadata.namespace ?? ""}/${event.object.metadata.name}`;
      const ingress = (event.object["status"] as { loadBalancer?: { ingress?: unknown[] } } | undefined)?.loadBalancer
        ?.ingress;
      if (event.type === "DELETED" || (ingress !== undefined && ingress.length > 0)) {
        pendingLb.delete(key);
        return;
      }
      if (pendingLb.has(key)) return;
      if ((event.object["spec"] as { type?: string } | undefined)?.type === "LoadBalancer") pendingLb.add(key);
    }
    onEvent(event);
  });

  // Objects that exist already (created before the controllers started).
  for (const ns of api.store.list("namespaces")) onEvent({ type: "ADDED", resource: "namespaces", object: ns });

  return {
    async idle() {
      while (pending.size > 0) await Promise.all([...pending]);
    },
    close() {
      closed = true;
      unsubscribe();
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
    },
  };
}
