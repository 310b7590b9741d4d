/**
 * The dev control plane's Kubernetes API semantics: a subset of kube-apiserver, backed by the ObjectStore. It is a
 * test double with the real behaviour: kubectl and the admin commands talk to it (over kube-api-server.ts) exactly as
 * to a cluster, and the seeding code, the LB controller and the tests' fake KubeClient use the same rules in-process.
 *
 * - Discovery (/api, /apis, /api/v1, /apis/<g>/<v>, /version), get/list/create/update(PUT)/merge-patch/delete and
 *   watch on the resources of kube-resources.ts, `?dryRun=All`, `labelSelector`/`fieldSelector` (equality).
 * - Server-side Table output when kubectl asks for it (kube-table.ts).
 * - Services (kube-services.ts): clusterIP(s) allocated from the service CIDR; an explicit clusterIP outside it is
 *   rejected with kube-apiserver's message. `spec` updates keep the status; `/status` updates keep the spec.
 * - TokenRequest (token-request.ts): POST .../serviceaccounts/<sa>/token → a signed JWT.
 * - Authentication and RBAC: kube-api-server.ts and kube-rbac.ts.
 * - Errors are `Status` objects with kube-apiserver's reasons and messages (kube-status.ts).
 */
import { randomUUID } from "node:crypto";
import { parseApiPath } from "../kube/api-path.js";
import type { ClusterIpAllocator } from "./ip-allocator.js";
import type { Target } from "./kube-objects.js";
import { prepareObject } from "./kube-objects.js";
import type { ResourceDefinition } from "./kube-resources.js";
import { apiVersionOf, findResource, servedResources } from "./kube-resources.js";
import { fieldValue, matches, parseSelector } from "./kube-selectors.js";
import type { ServiceSpec } from "./kube-services.js";
import { applyServiceDefaults } from "./kube-services.js";
import {
  ApiStatusError,
  alreadyExists,
  badRequest,
  conflict,
  fromStoreError,
  methodNotAllowed,
  notFound,
} from "./kube-status.js";
import { mergePatch, strategicMergePatch } from "./merge-patch.js";
import type { ServiceAccountTokens } from "./sa-tokens.js";
import { requestToken } from "./token-request.js";
import type { KubeObject, ObjectStore } from "./store.js";

export type { Target } from "./kube-objects.js";

export const DEV_KUBERNETES_VERSION = { major: "1", minor: "33", gitVersion: "v1.33.0-istio-vm-dev" } as const;

export interface KubeApiOptions {
  readonly store: ObjectStore;
  readonly allocator: ClusterIpAllocator;
  readonly tokens: ServiceAccountTokens;
  /** API groups switched off, e.g. "networking.k8s.io" to test clients on clusters without ServiceCIDR. */
  readonly disabledGroups?: ReadonlySet<string>;
  readonly now?: () => number;
}

/** kube-apiserver refuses to delete these (the namespace lifecycle admission plugin). */
const PROTECTED_NAMESPACES = new Set(["default", "kube-system", "kube-public"]);

export class KubeApi {
  readonly store: ObjectStore;
  readonly served: readonly ResourceDefinition[];
  readonly #allocator: ClusterIpAllocator;
  readonly #tokens: ServiceAccountTokens;
  readonly #now: () => number;
  #nextNodePort = 30000;
  readonly #unsubscribe: () => void;

  constructor(options: KubeApiOptions) {
    this.store = options.store;
    this.served = servedResources(options.disabledGroups ?? new Set());
    this.#allocator = options.allocator;
    this.#tokens = options.tokens;
    this.#now = options.now ?? Date.now;
    for (const service of this.store.list("services")) {
      for (const ip of (service["spec"] as ServiceSpec | undefined)?.clusterIPs ?? []) this.#allocator.mark(ip);
    }
    // Keep the allocator in step with every writer of the store (seeding code, other dev servers).
    this.#unsubscribe = this.store.watch((event) => {
      if (event.resource !== "services") return;
      const ips = (event.object["spec"] as ServiceSpec | undefined)?.clusterIPs ?? [];
      for (const ip of ips) {
        if (event.type === "DELETED") this.#allocator.release(ip);
        else this.#allocator.mark(ip);
      }
    });
  }

  close(): void {
    this.#unsubscribe();
  }

  resource(group: string, version: string, name: string): ResourceDefinition | undefined {
    return findResource(this.served, group, version, name);
  }

  /** The definition of a core or group resource by plural name (first served version). */
  def(name: string): ResourceDefinition {
    const def = this.served.find((r) => r.name === name);
    if (def === undefined) throw new Error(`resource ${name} is not served`);
    return def;
  }

  get(target: Target): KubeObject {
    if (target.name === undefined) throw badRequest("a name is required");
    const object = this.store.tryGet(target.def.name, target.namespace, target.name);
    if (object === undefined) throw notFound(target.def, target.name);
    return this.#present(target.def, object);
  }

  list(
    target: Target,
    query: { labelSelector?: string | null; fieldSelector?: string | null } = {},
  ): { items: KubeObject[]; resourceVersion: string } {
    const labels = parseSelector(query.labelSelector ?? null);
    const fields = parseSelector(query.fieldSelector ?? null);
    const items = this.store
      .list(target.def.name, target.def.namespaced ? target.namespace : undefined)
      .filter((o) => matches(labels, (k) => o.metadata.labels?.[k]) && matches(fields, (k) => fieldValue(o, k)))
      .map((o) => this.#present(target.def, o));
    return { items, resourceVersion: this.store.resourceVersion };
  }

  #serviceDefaults(object: KubeObject, current: KubeObject | undefined, dryRun: boolean): () => void {
    return applyServiceDefaults(object, current, {
      def: this.def("services"),
      allocator: this.#allocator,
      dryRun,
      nextNodePort: () => this.#nextNodePort++,
    });
  }

  #present(def: ResourceDefinition, object: KubeObject): KubeObject {
    return { ...object, apiVersion: apiVersionOf(def), kind: def.kind };
  }

  #checkNamespace(target: Target): void {
    if (!target.def.namespaced) return;
    if (target.namespace === undefined)
      throw badRequest(`${target.def.name} is namespaced: the path needs a namespace`);
    if (this.store.tryGet("namespaces", undefined, target.namespace) === undefined) {
      throw notFound(this.def("namespaces"), target.namespace);
    }
  }

  create(target: Target, body: unknown, options: { dryRun?: boolean } = {}): KubeObject {
    const dryRun = options.dryRun === true;
    if (target.subresource === "token") return requestToken({ store: this.store, tokens: this.#tokens }, target, body);
    if (target.subresource !== undefined) throw methodNotAllowed();
    this.#checkNamespace(target);
    const object = prepareObject(target, body, "create");
    if (this.store.tryGet(target.def.name, object.metadata.namespace, object.metadata.name) !== undefined) {
      throw alreadyExists(target.def, object.metadata.name);
    }
    delete object.metadata.resourceVersion;
    delete object.metadata.uid;
    let rollback = (): void => undefined;
    if (target.def.name === "services") rollback = this.#serviceDefaults(object, undefined, dryRun);
    if (target.def.name === "namespaces") object["status"] = { phase: "Active" };
    if (dryRun) {
      object.metadata.uid = randomUUID();
      object.metadata.creationTimestamp = new Date(this.#now()).toISOString().replace(/\.\d+Z$/, "Z");
      return object;
    }
    try {
      return this.#present(target.def, this.store.create(target.def.name, object));
    } catch (error) {
      rollback();
      throw fromStoreError(target.def, object.metadata.name, error);
    }
  }

  update(target: Target, body: unknown, options: { dryRun?: boolean } = {}): KubeObject {
    if (target.name === undefined) throw methodNotAllowed();
    if (target.subresource !== undefined && target.subresource !== "status") {
      throw methodNotAllowed();
    }
    const current = this.store.tryGet(target.def.name, target.namespace, target.name);
    if (current === undefined) throw notFound(target.def, target.name);
    const object = prepareObject(target, body, "update");
    const rv = object.metadata.resourceVersion;
    if (rv !== undefined && rv !== "" && rv !== current.metadata.resourceVersion)
      throw conflict(target.def, target.name);
    if (target.subresource === "status") {
      // The status subresource changes only status; everything else comes from the stored object.
      const next = { ...current, status: object["status"] } as KubeObject;
      next.metadata = { ...current.metadata };
      return this.#write(target, next, options);
    }
    if (target.def.name === "services") this.#serviceDefaults(object, current, options.dryRun === true);
    else if (current["status"] !== undefined && target.def.subresources?.includes("status") === true) {
      object["status"] = current["status"];
    }
    if (target.def.name === "namespaces") object["status"] = current["status"];
    object.metadata.uid = current.metadata.uid ?? randomUUID();
    if (current.metadata.creationTimestamp !== undefined)
      object.metadata.creationTimestamp = current.metadata.creationTimestamp;
    return this.#write(target, object, options);
  }

  /** `strategic`: kubectl's strategic merge patches (apply, edit), approximated by `strategicMergePatch`. */
  patch(target: Target, body: unknown, options: { dryRun?: boolean; strategic?: boolean } = {}): KubeObject {
    if (target.name === undefined) throw methodNotAllowed();
    const current = this.store.tryGet(target.def.name, target.namespace, target.name);
    if (current === undefined) throw notFound(target.def, target.name);
    const merged = (
      options.strategic === true ? strategicMergePatch(current, body) : mergePatch(current, body)
    ) as KubeObject;
    // A patch without a resourceVersion applies to whatever is current (as kube-apiserver does).
    const patchedMeta = (body as { metadata?: { resourceVersion?: string } } | null)?.metadata;
    merged.metadata = {
      ...merged.metadata,
      resourceVersion: patchedMeta?.resourceVersion ?? current.metadata.resourceVersion ?? "",
    };
    return this.update(target, merged, options);
  }

  #write(target: Target, object: KubeObject, options: { dryRun?: boolean }): KubeObject {
    if (options.dryRun === true) return this.#present(target.def, object);
    try {
      return this.#present(target.def, this.store.update(target.def.name, object));
    } catch (error) {
      throw fromStoreError(target.def, object.metadata.name, error);
    }
  }

  delete(target: Target, options: { dryRun?: boolean } = {}): KubeObject {
    if (target.name === undefined)
      throw new ApiStatusError(405, "MethodNotAllowed", "deletecollection is not supported by the dev API server");
    const current = this.store.tryGet(target.def.name, target.namespace, target.name);
    if (current === undefined) throw notFound(target.def, target.name);
    if (target.def.name === "namespaces" && PROTECTED_NAMESPACES.has(target.name)) {
      throw new ApiStatusError(
        403,
        "Forbidden",
        `namespaces "${target.name}" is forbidden: this namespace may not be deleted`,
        {
          name: target.name,
          kind: "namespaces",
        },
      );
    }
    if (options.dryRun === true) return this.#present(target.def, current);
    if (target.def.name === "namespaces") {
      // Namespace deletion removes everything in it (kube-apiserver's namespace controller, without the wait).
      for (const def of this.served.filter((r) => r.namespaced)) {
        for (const o of this.store.list(def.name, target.name))
          this.store.delete(def.name, target.name, o.metadata.name);
      }
    }
    try {
      return this.#present(target.def, this.store.delete(target.def.name, target.namespace, target.name));
    } catch (error) {
      throw fromStoreError(target.def, target.name, error);
    }
  }
}

/** The resource an API path names (kube/api-path.ts parses it), or undefined for a path that is no resource. */
export function resolveTarget(api: KubeApi, pathname: string): Target | undefined {
  const path = parseApiPath(pathname);
  if (path?.resource === undefined) return undefined;
  const { namespace, name, subresource } = path;
  const def = api.resource(path.group, path.version, path.resource);
  if (def === undefined) return undefined;
  if (!def.namespaced && namespace !== undefined) return undefined;
  if (subresource !== undefined && def.subresources?.includes(subresource) !== true) return undefined;
  return { def, namespace: def.namespaced ? namespace : undefined, name, subresource };
}
