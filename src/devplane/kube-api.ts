/**
 * The dev control plane's Kubernetes API: a subset of kube-apiserver over HTTPS, backed by the ObjectStore. It is a
 * test double with the real wire protocol: kubectl and the admin commands talk to it exactly as to a cluster.
 *
 * - Discovery (/api, /apis, /api/v1, /apis/<g>/<v>, /version), get/list/create/update(PUT)/merge-patch/delete and
 *   watch on the resources of kube-resources.ts, `?dryRun=All`, `labelSelector`/`fieldSelector` (equality).
 * - Server-side Table output when kubectl asks for it (`kubectl get` prints the usual columns).
 * - Services: clusterIP(s) allocated from the service CIDR; an explicit clusterIP outside it is rejected with
 *   kube-apiserver's message ("... The range of valid IPs is 10.96.0.0/12"), which the admin commands parse.
 *   `spec` updates keep the status; `/status` updates keep the spec.
 * - TokenRequest: POST .../serviceaccounts/<sa>/token → a signed JWT (audiences, expirationSeconds ≥ 600).
 * - Authentication: client certificates signed by the dev cluster CA (CN = user, O = groups), static bearer tokens,
 *   service-account JWTs with the API server audience. Anonymous → 401.
 * - Authorization: a per-user RBAC table, with kube-apiserver's 403 message.
 * - Errors are `Status` objects with kube-apiserver's reasons and messages (NotFound, AlreadyExists, Conflict, ...).
 *
 * `KubeApi` (no HTTP) holds the semantics, so the seeding code and the LB controller use the same rules as clients;
 * `startKubeApiServer` is the HTTPS layer.
 */
import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import https from "node:https";
import { isIP } from "node:net";
import type { TLSSocket } from "node:tls";
import type { ClusterIpAllocator } from "./ip-allocator.js";
import type { ResourceDefinition } from "./kube-resources.js";
import {
  apiGroupDocument,
  apiGroupListDocument,
  apiResourceListDocument,
  apiVersionOf,
  apiVersionsDocument,
  findResource,
  OPENAPI_V2_PROTOBUF,
  OPENAPI_V2_PROTOBUF_ACCEPT,
  openApiV2Document,
  openApiV3Document,
  openApiV3Index,
  servedResources,
} from "./kube-resources.js";
import { PROTOBUF_CONTENT_TYPE, ProtobufError, decodeKubernetesProtobuf } from "./kube-protobuf.js";
import type { ServiceAccountTokens } from "./sa-tokens.js";
import { API_SERVER_AUDIENCE, DEFAULT_TOKEN_AUDIENCE } from "./sa-tokens.js";
import type { KubeObject, StoreEvent } from "./store.js";
import { ObjectStore, StoreError } from "./store.js";

const OPENAPI_HASH = "istio-vm-dev-1";

export const DEV_KUBERNETES_VERSION = { major: "1", minor: "33", gitVersion: "v1.33.0-istio-vm-dev" } as const;

// ---------------------------------------------------------------------------------------------------------------
// Status errors

export interface StatusDetails {
  name?: string;
  group?: string;
  kind?: string;
  causes?: { reason: string; message: string; field: string }[];
}

export class ApiStatusError extends Error {
  readonly code: number;
  readonly reason: string;
  readonly details: StatusDetails | undefined;
  constructor(code: number, reason: string, message: string, details?: StatusDetails) {
    super(message);
    this.name = "ApiStatusError";
    this.code = code;
    this.reason = reason;
    this.details = details;
  }

  toStatus(): Record<string, unknown> {
    return {
      kind: "Status",
      apiVersion: "v1",
      metadata: {},
      status: "Failure",
      message: this.message,
      reason: this.reason,
      ...(this.details === undefined ? {} : { details: this.details }),
      code: this.code,
    };
  }
}

function qualified(def: ResourceDefinition): string {
  return def.group === "" ? def.name : `${def.name}.${def.group}`;
}

function notFound(def: ResourceDefinition, name: string): ApiStatusError {
  return new ApiStatusError(404, "NotFound", `${qualified(def)} "${name}" not found`, {
    name,
    ...(def.group === "" ? {} : { group: def.group }),
    kind: def.name,
  });
}

function invalid(def: ResourceDefinition, name: string, causes: { field: string; message: string }[]): ApiStatusError {
  const text = causes.map((c) => `${c.field}: ${c.message}`).join(", ");
  return new ApiStatusError(
    422,
    "Invalid",
    `${def.kind}${def.group === "" ? "" : `.${def.group}`} "${name}" is invalid: ${causes.length > 1 ? `[${text}]` : text}`,
    {
      name,
      ...(def.group === "" ? {} : { group: def.group }),
      kind: def.kind,
      causes: causes.map((c) => ({ reason: "FieldValueInvalid", message: c.message, field: c.field })),
    },
  );
}

function badRequest(message: string): ApiStatusError {
  return new ApiStatusError(400, "BadRequest", message);
}

const PATH_NOT_FOUND = (): ApiStatusError =>
  new ApiStatusError(404, "NotFound", "the server could not find the requested resource", {});

// ---------------------------------------------------------------------------------------------------------------
// Users and RBAC

export interface DevUser {
  readonly name: string;
  readonly groups: readonly string[];
}

export interface RbacRule {
  /** Verbs ("get", "list", "watch", "create", "update", "patch", "delete") or "*". */
  readonly verbs: readonly string[];
  /** Resources ("services", "serviceaccounts/token") or "*". */
  readonly resources: readonly string[];
  /** Namespaces the rule applies to; all (and cluster-scoped) when absent. */
  readonly namespaces?: readonly string[];
}

/** Rules by subject: "user:<name>" or "group:<name>". */
export type RbacTable = ReadonlyMap<string, readonly RbacRule[]>;

export const READ_VERBS = ["get", "list", "watch"] as const;

/** admin (group system:masters): everything; token-user: everything; viewer: read only. */
export function defaultRbac(): Map<string, RbacRule[]> {
  return new Map([
    ["group:system:masters", [{ verbs: ["*"], resources: ["*"] }]],
    ["user:token-user", [{ verbs: ["*"], resources: ["*"] }]],
    ["user:viewer", [{ verbs: [...READ_VERBS], resources: ["*"] }]],
  ]);
}

export function isAllowed(
  rbac: RbacTable,
  user: DevUser,
  request: { verb: string; resource: string; namespace: string | undefined },
): boolean {
  const rules = [user.name, ...user.groups.map((g) => `group:${g}`)].flatMap((subject) =>
    subject.startsWith("group:") ? (rbac.get(subject) ?? []) : (rbac.get(`user:${subject}`) ?? []),
  );
  return rules.some(
    (r) =>
      (r.verbs.includes("*") || r.verbs.includes(request.verb)) &&
      (r.resources.includes("*") || r.resources.includes(request.resource)) &&
      (r.namespaces === undefined || (request.namespace !== undefined && r.namespaces.includes(request.namespace))),
  );
}

export function forbidden(
  user: DevUser,
  request: { verb: string; def: ResourceDefinition; subresource?: string; namespace?: string; name?: string },
): ApiStatusError {
  const resource = request.subresource === undefined ? request.def.name : `${request.def.name}/${request.subresource}`;
  const what = `${qualified(request.def)}${request.name === undefined ? "" : ` "${request.name}"`}`;
  const scope = request.namespace === undefined ? "at the cluster scope" : `in the namespace "${request.namespace}"`;
  return new ApiStatusError(
    403,
    "Forbidden",
    `${what} is forbidden: User "${user.name}" cannot ${request.verb} resource "${resource}" in API group "${request.def.group}" ${scope}`,
    {
      ...(request.name === undefined ? {} : { name: request.name }),
      ...(request.def.group === "" ? {} : { group: request.def.group }),
      kind: request.def.name,
    },
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Selectors

type Requirement = { key: string; op: "=" | "!=" | "exists" | "!exists"; value: string };

function parseSelector(text: string | null): Requirement[] {
  if (text === null || text.trim() === "") return [];
  return text.split(",").map((part) => {
    const p = part.trim();
    const ne = /^([^!=]+)!=(.*)$/.exec(p);
    if (ne?.[1] !== undefined) return { key: ne[1].trim(), op: "!=", value: (ne[2] ?? "").trim() };
    const eq = /^([^!=]+)==?(.*)$/.exec(p);
    if (eq?.[1] !== undefined) return { key: eq[1].trim(), op: "=", value: (eq[2] ?? "").trim() };
    if (p.startsWith("!")) return { key: p.slice(1).trim(), op: "!exists", value: "" };
    if (/^[\w./-]+$/.test(p)) return { key: p, op: "exists", value: "" };
    throw badRequest(`unable to parse requirement: ${p} (only =, ==, != and existence are supported)`);
  });
}

function matches(requirements: readonly Requirement[], lookup: (key: string) => string | undefined): boolean {
  return requirements.every((r) => {
    const v = lookup(r.key);
    switch (r.op) {
      case "=":
        return v === r.value;
      case "!=":
        return v !== r.value;
      case "exists":
        return v !== undefined;
      case "!exists":
        return v === undefined;
    }
  });
}

function fieldValue(object: KubeObject, key: string): string | undefined {
  if (key === "metadata.name") return object.metadata.name;
  if (key === "metadata.namespace") return object.metadata.namespace;
  if (key === "type") return typeof object["type"] === "string" ? object["type"] : undefined;
  throw badRequest(`field label not supported: ${key}`);
}

// ---------------------------------------------------------------------------------------------------------------
// The API semantics

export interface KubeApiOptions {
  readonly store: ObjectStore;
  readonly allocator: ClusterIpAllocator;
  readonly tokens: ServiceAccountTokens;
  /** API groups switched off, e.g. "networking.k8s.io" to test clients on clusters without ServiceCIDR. */
  readonly disabledGroups?: ReadonlySet<string>;
  readonly now?: () => number;
}

export interface Target {
  readonly def: ResourceDefinition;
  readonly namespace: string | undefined;
  readonly name: string | undefined;
  readonly subresource: string | undefined;
}

interface ServiceSpec {
  type?: string;
  clusterIP?: string;
  clusterIPs?: string[];
  ipFamilies?: string[];
  ipFamilyPolicy?: string;
  ports?: { name?: string; port?: number; targetPort?: number | string; protocol?: string; nodePort?: number }[];
  sessionAffinity?: string;
  internalTrafficPolicy?: string;
  externalTrafficPolicy?: string;
  [key: string]: unknown;
}

/** kube-apiserver refuses to delete these (the namespace lifecycle admission plugin). */
const PROTECTED_NAMESPACES = new Set(["default", "kube-system", "kube-public"]);

const NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

function clone<T>(v: T): T {
  return structuredClone(v);
}

/** RFC 7386 JSON merge patch (kubectl's strategic merge patches are applied the same way: good enough here). */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return clone(patch);
  const base = target !== null && typeof target === "object" && !Array.isArray(target) ? target : {};
  const result = new Map<string, unknown>(Object.entries(base));
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith("$")) continue;
    if (value === null) result.delete(key);
    else result.set(key, mergePatch(result.get(key), value));
  }
  return Object.fromEntries(result);
}

/** List merge keys of the lists the dev API's objects have (k8s.io/api's patchMergeKey tags). */
const MERGE_KEYS: Readonly<Record<string, string>> = { ports: "port", conditions: "type", ingress: "ip" };

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/**
 * The subset of strategic merge patch that kubectl apply/edit produce for these objects: maps merge as in RFC 7386;
 * lists with a merge key (service ports by `port`, ...) merge element-wise, honour `{"$patch": "delete"}` elements and
 * `$setElementOrder/<list>`; other lists are replaced. `$retainKeys` and `$deleteFromPrimitiveList` are ignored.
 */
export function strategicMergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return clone(patch);
  const result = new Map<string, unknown>(Object.entries(isObject(target) ? target : {}));
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith("$")) continue;
    if (value === null) {
      result.delete(key);
      continue;
    }
    const mergeKey = MERGE_KEYS[key];
    const current = result.get(key);
    if (mergeKey !== undefined && Array.isArray(value) && Array.isArray(current)) {
      let merged = current.filter(isObject).map((item) => ({ ...item }));
      for (const item of value) {
        if (!isObject(item)) continue;
        const id = item[mergeKey];
        const index = merged.findIndex((m) => m[mergeKey] === id);
        if (item["$patch"] === "delete") {
          if (index >= 0) merged.splice(index, 1);
        } else if (index >= 0) {
          merged[index] = strategicMergePatch(merged[index], item) as Record<string, unknown>;
        } else {
          merged.push(strategicMergePatch({}, item) as Record<string, unknown>);
        }
      }
      const order = patch[`$setElementOrder/${key}`];
      if (Array.isArray(order)) {
        const ids = order.filter(isObject).map((o) => o[mergeKey]);
        merged = [...merged].sort((a, b) => ids.indexOf(a[mergeKey]) - ids.indexOf(b[mergeKey]));
      }
      result.set(key, merged);
    } else {
      result.set(key, isObject(value) ? strategicMergePatch(current, value) : clone(value));
    }
  }
  return Object.fromEntries(result);
}

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

  #prepare(target: Target, body: unknown, verb: "create" | "update"): KubeObject {
    if (body === null || typeof body !== "object" || Array.isArray(body)) {
      throw badRequest("the request body must be a JSON object");
    }
    const object = clone(body) as KubeObject;
    // The body is client input: metadata may be missing even though the type says otherwise.
    const metadata = ((object as { metadata?: KubeObject["metadata"] }).metadata ?? {}) as KubeObject["metadata"];
    object.metadata = metadata;
    const def = target.def;
    const kind: unknown = object.kind;
    if (kind !== undefined && kind !== def.kind) {
      throw badRequest(`the body is a ${JSON.stringify(kind)}, but the path is for ${def.kind}`);
    }
    if (verb === "create" && (metadata.name as string | undefined) === undefined) metadata.name = "";
    if (verb === "create" && metadata.name === "") {
      const prefix = typeof metadata["generateName"] === "string" ? metadata["generateName"] : "";
      if (prefix === "")
        throw invalid(def, "", [
          { field: "metadata.name", message: "Required value: name or generateName is required" },
        ]);
      metadata.name = `${prefix}${randomUUID().slice(0, 5)}`;
    }
    if (target.name !== undefined && metadata.name !== target.name) {
      throw badRequest(`the name of the object (${metadata.name}) does not match the name on the URL (${target.name})`);
    }
    const name = metadata.name;
    const pattern = def.name === "namespaces" || def.name === "services" ? NAME : SUBDOMAIN;
    if (!pattern.test(name) || name.length > (pattern === NAME ? 63 : 253)) {
      throw invalid(def, name, [
        {
          field: "metadata.name",
          message: `Invalid value: "${name}": a lowercase RFC 1123 ${pattern === NAME ? "label" : "subdomain"} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character`,
        },
      ]);
    }
    if (def.namespaced) {
      if (metadata.namespace !== undefined && metadata.namespace !== "" && metadata.namespace !== target.namespace) {
        throw badRequest("the namespace of the provided object does not match the namespace sent on the request");
      }
      metadata.namespace = target.namespace ?? "";
    } else {
      delete metadata.namespace;
    }
    object.apiVersion = apiVersionOf(def);
    object.kind = def.kind;
    if (def.name === "secrets") this.#normalizeSecret(object, name);
    return object;
  }

  #normalizeSecret(object: KubeObject, name: string): void {
    const data = { ...((object["data"] as Record<string, string> | undefined) ?? {}) };
    for (const [key, value] of Object.entries(data)) {
      if (typeof value !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(value)) {
        throw invalid(this.def("secrets"), name, [
          { field: `data[${key}]`, message: "Invalid value: not base64-encoded" },
        ]);
      }
    }
    const stringData = object["stringData"] as Record<string, unknown> | undefined;
    for (const [key, value] of Object.entries(stringData ?? {})) {
      if (typeof value !== "string") {
        throw badRequest(
          `Secret in version "v1" cannot be handled as a Secret: json: cannot unmarshal ${typeof value} into Go struct field Secret.stringData of type string (quote "${key}"'s value in the YAML)`,
        );
      }
      data[key] = Buffer.from(value).toString("base64");
    }
    delete object["stringData"];
    object["data"] = data;
    object["type"] ??= "Opaque";
  }

  #serviceDefaults(object: KubeObject, current: KubeObject | undefined, dryRun: boolean): () => void {
    const def = this.def("services");
    const name = object.metadata.name;
    const spec = (object["spec"] as ServiceSpec | undefined) ?? {};
    object["spec"] = spec;
    spec.type ??= "ClusterIP";
    if (!["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].includes(spec.type)) {
      throw invalid(def, name, [
        {
          field: "spec.type",
          message: `Unsupported value: "${spec.type}": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"`,
        },
      ]);
    }
    spec.sessionAffinity ??= "None";
    for (const port of spec.ports ?? []) {
      port.protocol ??= "TCP";
      if (port.port !== undefined) port.targetPort ??= port.port;
    }
    const rollback: string[] = [];
    const currentSpec = current?.["spec"] as ServiceSpec | undefined;
    if (currentSpec !== undefined) {
      // clusterIP is immutable; an update that leaves it out keeps it.
      const wanted = spec.clusterIPs ?? (spec.clusterIP === undefined ? undefined : [spec.clusterIP]);
      const had = currentSpec.clusterIPs ?? [];
      if (wanted !== undefined && wanted.length > 0 && wanted[0] !== "" && wanted[0] !== had[0]) {
        throw invalid(def, name, [
          {
            field: "spec.clusterIPs[0]",
            message: `Invalid value: []string{${wanted.map((ip) => `"${ip}"`).join(", ")}}: may not change once set`,
          },
        ]);
      }
      if (currentSpec.clusterIP !== undefined) spec.clusterIP = currentSpec.clusterIP;
      if (currentSpec.clusterIPs !== undefined) spec.clusterIPs = currentSpec.clusterIPs;
      if (currentSpec.ipFamilies !== undefined) spec.ipFamilies = currentSpec.ipFamilies;
      spec.ipFamilyPolicy ??= currentSpec.ipFamilyPolicy ?? "SingleStack";
    } else if (spec.type !== "ExternalName") {
      const requested =
        spec.clusterIPs ?? (spec.clusterIP === undefined || spec.clusterIP === "" ? [] : [spec.clusterIP]);
      if (requested[0] === "None") {
        spec.clusterIP = "None";
        spec.clusterIPs = ["None"];
      } else if (requested.length > 0) {
        for (const ip of requested) {
          if (isIP(ip) === 0) {
            throw invalid(def, name, [
              {
                field: "spec.clusterIPs[0]",
                message: `Invalid value: "${ip}": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)`,
              },
            ]);
          }
          const ipList = `[]string{${requested.map((r) => `"${r}"`).join(", ")}}`;
          const result = dryRun
            ? this.#allocator.has(ip)
              ? "allocated"
              : this.#wouldReserve(ip)
            : this.#allocator.reserve(ip);
          if (result === "family-not-configured") {
            throw invalid(def, name, [
              {
                field: "spec.ipFamilies[0]",
                message: `Invalid value: "IPv${isIP(ip)}": not configured on this cluster`,
              },
            ]);
          }
          if (result === "out-of-range") {
            throw invalid(def, name, [
              {
                field: "spec.clusterIPs",
                message: `Invalid value: ${ipList}: failed to allocate IP ${ip}: the provided IP (${ip}) is not in the valid range. The range of valid IPs is ${this.#allocator.rangeText}`,
              },
            ]);
          }
          if (result === "allocated") {
            throw invalid(def, name, [
              {
                field: "spec.clusterIPs",
                message: `Invalid value: ${ipList}: failed to allocate IP ${ip}: provided IP is already allocated`,
              },
            ]);
          }
          if (!dryRun) rollback.push(ip);
        }
        spec.clusterIP = requested[0] ?? "";
        spec.clusterIPs = requested;
      } else {
        const ip = this.#allocator.allocate();
        // A dry run shows the address it would get, without keeping it.
        if (dryRun && ip !== undefined) this.#allocator.release(ip);
        if (ip === undefined) {
          throw new ApiStatusError(
            500,
            "InternalError",
            `Internal error occurred: failed to allocate a serviceIP: range is full`,
          );
        }
        if (!dryRun) rollback.push(ip);
        spec.clusterIP = ip;
        spec.clusterIPs = [ip];
      }
      if (spec.clusterIP !== "None") spec.ipFamilies = spec.clusterIPs.map((ip) => (isIP(ip) === 6 ? "IPv6" : "IPv4"));
      spec.ipFamilyPolicy ??= "SingleStack";
    }
    if (spec.type !== "ExternalName") spec.internalTrafficPolicy ??= "Cluster";
    if (spec.type === "NodePort" || spec.type === "LoadBalancer") {
      spec.externalTrafficPolicy ??= "Cluster";
      for (const port of spec.ports ?? []) port.nodePort ??= this.#nextNodePort++;
    }
    const status = current?.["status"] ?? object["status"] ?? { loadBalancer: {} };
    object["status"] = current === undefined ? { loadBalancer: {} } : status;
    return () => {
      for (const ip of rollback) this.#allocator.release(ip);
    };
  }

  #wouldReserve(ip: string): "ok" | "out-of-range" | "allocated" | "family-not-configured" {
    const result = this.#allocator.reserve(ip);
    if (result === "ok") this.#allocator.release(ip);
    return result;
  }

  create(target: Target, body: unknown, options: { dryRun?: boolean } = {}): KubeObject {
    const dryRun = options.dryRun === true;
    if (target.subresource === "token") return this.#tokenRequest(target, body);
    if (target.subresource !== undefined)
      throw new ApiStatusError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
      );
    this.#checkNamespace(target);
    const object = this.#prepare(target, body, "create");
    if (this.store.tryGet(target.def.name, object.metadata.namespace, object.metadata.name) !== undefined) {
      throw new ApiStatusError(
        409,
        "AlreadyExists",
        `${qualified(target.def)} "${object.metadata.name}" already exists`,
        {
          name: object.metadata.name,
          ...(target.def.group === "" ? {} : { group: target.def.group }),
          kind: target.def.name,
        },
      );
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
      throw this.#fromStore(target.def, object.metadata.name, error);
    }
  }

  update(target: Target, body: unknown, options: { dryRun?: boolean } = {}): KubeObject {
    if (target.name === undefined)
      throw new ApiStatusError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
      );
    if (target.subresource !== undefined && target.subresource !== "status") {
      throw new ApiStatusError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
      );
    }
    const current = this.store.tryGet(target.def.name, target.namespace, target.name);
    if (current === undefined) throw notFound(target.def, target.name);
    const object = this.#prepare(target, body, "update");
    const rv = object.metadata.resourceVersion;
    if (rv !== undefined && rv !== "" && rv !== current.metadata.resourceVersion)
      throw this.#conflict(target.def, target.name);
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
    if (target.name === undefined)
      throw new ApiStatusError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
      );
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
      throw this.#fromStore(target.def, object.metadata.name, error);
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
      throw this.#fromStore(target.def, target.name, error);
    }
  }

  #tokenRequest(target: Target, body: unknown): KubeObject {
    if (target.def.name !== "serviceaccounts" || target.name === undefined) throw PATH_NOT_FOUND();
    const sa = this.store.tryGet("serviceaccounts", target.namespace, target.name);
    if (sa === undefined) throw notFound(target.def, target.name);
    const spec = (body as { spec?: { audiences?: unknown; expirationSeconds?: unknown } } | null)?.spec ?? {};
    const audiences =
      Array.isArray(spec.audiences) && spec.audiences.length > 0
        ? spec.audiences.map(String)
        : [DEFAULT_TOKEN_AUDIENCE];
    const expirationSeconds = spec.expirationSeconds === undefined ? 3600 : Number(spec.expirationSeconds);
    const trDef: ResourceDefinition = {
      group: "authentication.k8s.io",
      version: "v1",
      name: "tokenrequests",
      singular: "tokenrequest",
      kind: "TokenRequest",
      namespaced: true,
    };
    if (!Number.isInteger(expirationSeconds) || expirationSeconds < 600) {
      throw invalid(trDef, target.name, [
        {
          field: "spec.expirationSeconds",
          message: `Invalid value: ${String(spec.expirationSeconds)}: may not specify a duration less than 10 minutes`,
        },
      ]);
    }
    if (expirationSeconds > 2 ** 32) {
      throw invalid(trDef, target.name, [
        {
          field: "spec.expirationSeconds",
          message: `Invalid value: ${expirationSeconds}: may not specify a duration larger than 2^32 seconds`,
        },
      ]);
    }
    const { token, expiresAt } = this.#tokens.issue({
      namespace: target.namespace ?? "default",
      serviceAccount: target.name,
      ...(sa.metadata.uid === undefined ? {} : { uid: sa.metadata.uid }),
      audiences,
      expirationSeconds,
    });
    return {
      kind: "TokenRequest",
      apiVersion: "authentication.k8s.io/v1",
      metadata: {
        name: target.name,
        namespace: target.namespace ?? "default",
        creationTimestamp: null as unknown as string,
      },
      spec: { audiences, expirationSeconds, boundObjectRef: null },
      status: { token, expirationTimestamp: new Date(expiresAt).toISOString().replace(/\.\d+Z$/, "Z") },
    };
  }

  #conflict(def: ResourceDefinition, name: string): ApiStatusError {
    return new ApiStatusError(
      409,
      "Conflict",
      `Operation cannot be fulfilled on ${qualified(def)} "${name}": the object has been modified; please apply your changes to the latest version and try again`,
      { name, ...(def.group === "" ? {} : { group: def.group }), kind: def.name },
    );
  }

  #fromStore(def: ResourceDefinition, name: string, error: unknown): unknown {
    if (!(error instanceof StoreError)) return error;
    switch (error.reason) {
      case "NotFound":
        return notFound(def, name);
      case "Conflict":
        return this.#conflict(def, name);
      case "AlreadyExists":
        return new ApiStatusError(409, "AlreadyExists", `${qualified(def)} "${name}" already exists`, {
          name,
          kind: def.name,
        });
      case "Invalid":
        return invalid(def, name, [{ field: "metadata", message: error.message }]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Table output for kubectl get

function age(timestamp: unknown, now: number): string {
  const t = typeof timestamp === "string" ? Date.parse(timestamp) : NaN;
  if (Number.isNaN(t)) return "<unknown>";
  const s = Math.max(0, Math.floor((now - t) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

function text(value: unknown, fallback: string): string {
  return typeof value === "string" || typeof value === "number" ? String(value) : fallback;
}

function columnsFor(def: ResourceDefinition): { name: string; cell: (o: KubeObject) => string | number }[] {
  const spec = (o: KubeObject): Record<string, unknown> => (o["spec"] as Record<string, unknown> | undefined) ?? {};
  switch (def.name) {
    case "services":
      return [
        { name: "Type", cell: (o) => text(spec(o)["type"], "ClusterIP") },
        { name: "Cluster-IP", cell: (o) => text(spec(o)["clusterIP"], "<none>") },
        {
          name: "External-IP",
          cell: (o) => {
            const ingress = (
              (o["status"] as { loadBalancer?: { ingress?: { ip?: string; hostname?: string }[] } } | undefined)
                ?.loadBalancer?.ingress ?? []
            ).map((i) => i.ip ?? i.hostname ?? "");
            if (ingress.length > 0) return ingress.join(",");
            return spec(o)["type"] === "LoadBalancer" ? "<pending>" : "<none>";
          },
        },
        {
          name: "Port(s)",
          cell: (o) =>
            ((spec(o)["ports"] as { port?: number; protocol?: string; nodePort?: number }[] | undefined) ?? [])
              .map((p) => `${p.port ?? ""}${p.nodePort === undefined ? "" : `:${p.nodePort}`}/${p.protocol ?? "TCP"}`)
              .join(",") || "<none>",
        },
      ];
    case "endpoints":
      return [
        {
          name: "Endpoints",
          cell: (o) => {
            const subsets =
              (o["subsets"] as { addresses?: { ip: string }[]; ports?: { port: number }[] }[] | undefined) ?? [];
            const list = subsets.flatMap((s) =>
              (s.addresses ?? []).flatMap((a) => (s.ports ?? [{ port: 0 }]).map((p) => `${a.ip}:${p.port}`)),
            );
            return list.length === 0
              ? "<none>"
              : list.slice(0, 3).join(",") + (list.length > 3 ? ` + ${list.length - 3} more...` : "");
          },
        },
      ];
    case "secrets":
      return [
        { name: "Type", cell: (o) => text(o["type"], "Opaque") },
        { name: "Data", cell: (o) => Object.keys((o["data"] as object | undefined) ?? {}).length },
      ];
    case "configmaps":
      return [{ name: "Data", cell: (o) => Object.keys((o["data"] as object | undefined) ?? {}).length }];
    case "namespaces":
      return [{ name: "Status", cell: (o) => (o["status"] as { phase?: string } | undefined)?.phase ?? "Active" }];
    case "servicecidrs":
      return [{ name: "CIDRs", cell: (o) => ((spec(o)["cidrs"] as string[] | undefined) ?? []).join(",") }];
    case "workloadentries":
      return [{ name: "Address", cell: (o) => text(spec(o)["address"], "") }];
    default:
      return [];
  }
}

export function toTable(
  def: ResourceDefinition,
  objects: readonly KubeObject[],
  resourceVersion: string,
  now: number,
): unknown {
  const columns = columnsFor(def);
  return {
    kind: "Table",
    apiVersion: "meta.k8s.io/v1",
    metadata: { resourceVersion },
    columnDefinitions: [
      { name: "Name", type: "string", format: "name", description: "Name of the object", priority: 0 },
      ...columns.map((c) => ({ name: c.name, type: "string", format: "", description: c.name, priority: 0 })),
      { name: "Age", type: "string", format: "", description: "Time since creation", priority: 0 },
    ],
    rows: objects.map((o) => ({
      cells: [o.metadata.name, ...columns.map((c) => c.cell(o)), age(o.metadata.creationTimestamp, now)],
      object: { kind: "PartialObjectMetadata", apiVersion: "meta.k8s.io/v1", metadata: o.metadata },
    })),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// HTTPS server

export interface KubeApiServerOptions {
  readonly api: KubeApi;
  readonly tokens: ServiceAccountTokens;
  readonly tls: { readonly certPem: string; readonly keyPem: string; readonly clientCaPem: string };
  /** Static bearer tokens → users. */
  readonly staticTokens: ReadonlyMap<string, DevUser>;
  readonly rbac: RbacTable;
  readonly listen: readonly { readonly host: string; readonly port: number }[];
  /** Called once per request (method, path, user, status), for logs. */
  readonly onRequest?: (entry: { method: string; path: string; user: string; status: number }) => void;
  readonly now?: () => number;
}

export interface KubeApiServer {
  /** One https:// URL per listening address, with the actual port. */
  readonly urls: readonly string[];
  /** Requests served (each counts), for benchmarks. */
  readonly requests: () => number;
  close(): Promise<void>;
}

function send(res: ServerResponse, code: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(code, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    "cache-control": "no-cache, private",
  });
  res.end(text);
}

function readBody(req: IncomingMessage, limit = 3 * 1024 * 1024): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new ApiStatusError(413, "RequestEntityTooLarge", "the request body is too large"));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on("end", () => {
      resolve(Buffer.concat(chunks));
    });
    req.on("error", reject);
  });
}

function parseJson(body: Buffer): unknown {
  const text = body.toString("utf8");
  if (text.trim() === "") return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw badRequest(`the request body is not JSON: ${(error as Error).message}`);
  }
}

/** Parses an API path into the resource target, or undefined for a path that is no resource. */
export function resolveTarget(api: KubeApi, pathname: string): Target | undefined {
  const parts = pathname
    .split("/")
    .filter((p) => p !== "")
    .map(decodeURIComponent);
  let group: string;
  let version: string;
  let rest: string[];
  if (parts[0] === "api" && parts.length >= 3) {
    group = "";
    version = parts[1] ?? "";
    rest = parts.slice(2);
  } else if (parts[0] === "apis" && parts.length >= 4) {
    group = parts[1] ?? "";
    version = parts[2] ?? "";
    rest = parts.slice(3);
  } else {
    return undefined;
  }
  let namespace: string | undefined;
  if (rest[0] === "namespaces" && rest.length >= 3) {
    namespace = rest[1];
    rest = rest.slice(2);
  }
  const [resource = "", name, subresource, ...extra] = rest;
  if (extra.length > 0) return undefined;
  const def = api.resource(group, version, resource);
  if (def === undefined) return undefined;
  if (!def.namespaced && namespace !== undefined) return undefined;
  if (subresource !== undefined && def.subresources?.includes(subresource) !== true) return undefined;
  return { def, namespace: def.namespaced ? namespace : undefined, name, subresource };
}

function bodyType(req: IncomingMessage): string {
  return (req.headers["content-type"] ?? "application/json").split(";")[0]?.trim() ?? "";
}

/**
 * Request bodies: JSON, and protobuf for the built-in kinds kubectl's typed commands send. Anything else gets 415,
 * as kube-apiserver answers media types it does not know.
 */
function checkBodyType(req: IncomingMessage, patch: boolean): void {
  const type = bodyType(req);
  const accepted = patch
    ? ["application/merge-patch+json", "application/strategic-merge-patch+json"]
    : ["application/json", PROTOBUF_CONTENT_TYPE, ""];
  if (accepted.includes(type)) return;
  throw new ApiStatusError(
    415,
    "UnsupportedMediaType",
    `the body of the request was in an unknown format - accepted media types include: ${accepted.filter((t) => t !== "").join(", ")}`,
  );
}

async function readObject(req: IncomingMessage): Promise<unknown> {
  const body = await readBody(req);
  if (bodyType(req) !== PROTOBUF_CONTENT_TYPE) return parseJson(body);
  try {
    return decodeKubernetesProtobuf(body);
  } catch (error) {
    if (error instanceof ProtobufError) {
      throw new ApiStatusError(
        415,
        "UnsupportedMediaType",
        `${error.message} (the istio-vm dev API server decodes protobuf only for the kinds it serves)`,
      );
    }
    throw error;
  }
}

function wantsTable(req: IncomingMessage): boolean {
  return /as=Table/.test(req.headers.accept ?? "");
}

export async function startKubeApiServer(options: KubeApiServerOptions): Promise<KubeApiServer> {
  const { api } = options;
  const now = options.now ?? Date.now;
  let served = 0;
  const watches = new Set<ServerResponse>();

  const authenticate = (req: IncomingMessage): DevUser | undefined => {
    const header = req.headers.authorization;
    if (header !== undefined) {
      const match = /^Bearer\s+(\S+)$/i.exec(header);
      if (match?.[1] === undefined) return undefined;
      const token = match[1];
      const user = options.staticTokens.get(token);
      if (user !== undefined) return user;
      try {
        const sa = options.tokens.verify(token, API_SERVER_AUDIENCE);
        return {
          name: `system:serviceaccount:${sa.namespace}:${sa.serviceAccount}`,
          groups: ["system:serviceaccounts", `system:serviceaccounts:${sa.namespace}`, "system:authenticated"],
        };
      } catch {
        return undefined;
      }
    }
    const socket = req.socket as unknown as TLSSocket;
    if (socket.authorized) {
      const cert = socket.getPeerCertificate();
      const subject = cert.subject as Record<string, string | string[] | undefined> | undefined;
      const cn = subject?.["CN"];
      const org = subject?.["O"];
      if (typeof cn === "string" && cn !== "") {
        return {
          name: cn,
          groups: [...(org === undefined ? [] : Array.isArray(org) ? org : [org]), "system:authenticated"],
        };
      }
    }
    return undefined;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse, serverAddress: string): Promise<number> => {
    const url = new URL(req.url ?? "/", "https://dev.invalid");
    const method = req.method ?? "GET";
    const path = url.pathname.replace(/\/+$/, "") || "/";
    const user = authenticate(req);
    if (user === undefined) {
      throw new ApiStatusError(401, "Unauthorized", "Unauthorized");
    }
    // Discovery and version: readable by every authenticated user (system:discovery).
    if (method === "GET") {
      if (path === "/version")
        return reply(res, 200, { ...DEV_KUBERNETES_VERSION, platform: "linux/amd64", goVersion: "go1.24" });
      if (path === "/api") return reply(res, 200, apiVersionsDocument(serverAddress));
      if (path === "/apis") return reply(res, 200, apiGroupListDocument(api.served));
      const core = /^\/api\/([^/]+)$/.exec(path);
      if (core?.[1] !== undefined) return replyOr404(res, apiResourceListDocument(api.served, "", core[1]));
      const groupOnly = /^\/apis\/([^/]+)$/.exec(path);
      if (groupOnly?.[1] !== undefined) return replyOr404(res, apiGroupDocument(api.served, groupOnly[1]));
      const gv = /^\/apis\/([^/]+)\/([^/]+)$/.exec(path);
      if (gv?.[1] !== undefined && gv[2] !== undefined)
        return replyOr404(res, apiResourceListDocument(api.served, gv[1], gv[2]));
      if (path === "/openapi/v2") {
        const accept = req.headers.accept ?? "";
        const protobuf = accept.includes(OPENAPI_V2_PROTOBUF_ACCEPT) || accept.includes(OPENAPI_V2_PROTOBUF);
        const body = openApiV2Document(protobuf ? "protobuf" : "json");
        res.writeHead(200, {
          "content-type": protobuf ? OPENAPI_V2_PROTOBUF : "application/json",
          "content-length": body.length,
        });
        res.end(body);
        return 200;
      }
      if (path === "/openapi/v3") return reply(res, 200, openApiV3Index(api.served, OPENAPI_HASH));
      const openapi = /^\/openapi\/v3\/(?:api\/([^/]+)|apis\/([^/]+)\/([^/]+))$/.exec(path);
      if (openapi !== null) {
        const doc =
          openapi[1] !== undefined
            ? openApiV3Document(api.served, "", openapi[1])
            : openApiV3Document(api.served, openapi[2] ?? "", openapi[3] ?? "");
        return replyOr404(res, doc);
      }
      if (path === "/healthz" || path === "/readyz" || path === "/livez") {
        res.writeHead(200, { "content-type": "text/plain" });
        res.end("ok");
        return 200;
      }
    }
    const target = resolveTarget(api, path);
    if (target === undefined) throw PATH_NOT_FOUND();
    const watch = url.searchParams.get("watch");
    const isWatch = method === "GET" && (watch === "true" || watch === "1");
    let verb: string;
    switch (method) {
      case "GET":
        verb = isWatch ? "watch" : target.name === undefined ? "list" : "get";
        break;
      case "POST":
        verb = "create";
        break;
      case "PUT":
        verb = "update";
        break;
      case "PATCH":
        verb = "patch";
        break;
      case "DELETE":
        verb = target.name === undefined ? "deletecollection" : "delete";
        break;
      default:
        throw new ApiStatusError(
          405,
          "MethodNotAllowed",
          "the server does not allow this method on the requested resource",
        );
    }
    const rbacResource =
      target.subresource === undefined ? target.def.name : `${target.def.name}/${target.subresource}`;
    // As kube-apiserver, authorization happens before the body is read: a forbidden create names no object.
    if (!isAllowed(options.rbac, user, { verb, resource: rbacResource, namespace: target.namespace })) {
      throw forbidden(user, {
        verb,
        def: target.def,
        ...(target.subresource === undefined ? {} : { subresource: target.subresource }),
        ...(target.namespace === undefined ? {} : { namespace: target.namespace }),
        ...(target.name === undefined || method === "POST" ? {} : { name: target.name }),
      });
    }
    if (method === "POST" || method === "PUT" || method === "PATCH") checkBodyType(req, method === "PATCH");
    const dryRun = url.searchParams.getAll("dryRun").includes("All");
    if (!dryRun && url.searchParams.has("dryRun")) {
      throw badRequest(`Invalid dry run value: ${url.searchParams.get("dryRun") ?? ""} (only "All" is supported)`);
    }
    switch (verb) {
      case "get": {
        const object = api.get(target);
        return reply(
          res,
          200,
          wantsTable(req) ? toTable(target.def, [object], api.store.resourceVersion, now()) : object,
        );
      }
      case "list": {
        const { items, resourceVersion } = api.list(target, {
          labelSelector: url.searchParams.get("labelSelector"),
          fieldSelector: url.searchParams.get("fieldSelector"),
        });
        if (wantsTable(req)) return reply(res, 200, toTable(target.def, items, resourceVersion, now()));
        return reply(res, 200, {
          kind: `${target.def.kind}List`,
          apiVersion: apiVersionOf(target.def),
          metadata: { resourceVersion },
          items,
        });
      }
      case "watch":
        startWatch(target, url, res);
        return 200;
      case "create": {
        const created = api.create(target, await readObject(req), { dryRun });
        return reply(res, 201, created);
      }
      case "update":
        return reply(res, 200, api.update(target, await readObject(req), { dryRun }));
      case "patch":
        return reply(
          res,
          200,
          api.patch(target, parseJson(await readBody(req)), {
            dryRun,
            strategic: bodyType(req) === "application/strategic-merge-patch+json",
          }),
        );
      case "delete": {
        const deleted = api.delete(target, { dryRun });
        return reply(res, 200, {
          kind: "Status",
          apiVersion: "v1",
          metadata: {},
          status: "Success",
          details: {
            name: deleted.metadata.name,
            ...(target.def.group === "" ? {} : { group: target.def.group }),
            kind: target.def.name,
            uid: deleted.metadata.uid,
          },
        });
      }
      default:
        throw new ApiStatusError(405, "MethodNotAllowed", `${verb} is not supported by the dev API server`);
    }
  };

  const startWatch = (target: Target, url: URL, res: ServerResponse): void => {
    const labels = parseSelector(url.searchParams.get("labelSelector"));
    const fields = parseSelector(url.searchParams.get("fieldSelector"));
    res.writeHead(200, {
      "content-type": "application/json",
      "transfer-encoding": "chunked",
      "cache-control": "no-cache, private",
    });
    const accept = (event: StoreEvent): boolean =>
      event.resource === target.def.name &&
      (target.namespace === undefined || event.object.metadata.namespace === target.namespace) &&
      (target.name === undefined || event.object.metadata.name === target.name) &&
      matches(labels, (k) => event.object.metadata.labels?.[k]) &&
      matches(fields, (k) => fieldValue(event.object, k));
    const unsubscribe = api.store.watch((event) => {
      if (!accept(event)) return;
      res.write(
        `${JSON.stringify({ type: event.type, object: { ...event.object, apiVersion: apiVersionOf(target.def), kind: target.def.kind } })}\n`,
      );
    });
    // Headers go out only now, after the subscription: a client that has them will see every later change.
    res.flushHeaders();
    const timeoutSeconds = Number(url.searchParams.get("timeoutSeconds") ?? "1800");
    const timer = setTimeout(() => res.end(), Math.min(Math.max(timeoutSeconds, 1), 3600) * 1000);
    watches.add(res);
    res.on("close", () => {
      clearTimeout(timer);
      unsubscribe();
      watches.delete(res);
    });
  };

  const reply = (res: ServerResponse, code: number, body: unknown): number => {
    send(res, code, body);
    return code;
  };
  const replyOr404 = (res: ServerResponse, body: unknown): number => {
    if (body === undefined) throw PATH_NOT_FOUND();
    return reply(res, 200, body);
  };

  const servers: https.Server[] = [];
  const urls: string[] = [];
  try {
    for (const address of options.listen) {
      const server = https.createServer({
        cert: options.tls.certPem,
        key: options.tls.keyPem,
        ca: options.tls.clientCaPem,
        requestCert: true,
        rejectUnauthorized: false,
      });
      server.keepAliveTimeout = 30_000;
      const hostForUrl = isIP(address.host) === 6 ? `[${address.host}]` : address.host;
      server.on("request", (req: IncomingMessage, res: ServerResponse) => {
        served++;
        const local = `${hostForUrl}:${String((server.address() as { port: number } | null)?.port ?? address.port)}`;
        let user = "-";
        handle(req, res, local).then(
          (status) => options.onRequest?.({ method: req.method ?? "", path: req.url ?? "", user, status }),
          (error: unknown) => {
            const status =
              error instanceof ApiStatusError
                ? error
                : new ApiStatusError(500, "InternalError", `Internal error occurred: ${(error as Error).message}`);
            user = "-";
            if (!res.headersSent) send(res, status.code, status.toStatus());
            else res.end();
            options.onRequest?.({ method: req.method ?? "", path: req.url ?? "", user, status: status.code });
          },
        );
      });
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(address.port, address.host, () => {
          server.off("error", reject);
          resolve();
        });
      });
      servers.push(server);
      const port = (server.address() as { port: number }).port;
      urls.push(`https://${hostForUrl}:${port}`);
    }
  } catch (error) {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
    throw error;
  }
  return {
    urls,
    requests: () => served,
    async close() {
      for (const res of watches) res.end();
      await Promise.all(
        servers.map(
          (s) =>
            new Promise<void>((resolve) => {
              s.close(() => {
                resolve();
              });
              s.closeAllConnections();
            }),
        ),
      );
    },
  };
}
