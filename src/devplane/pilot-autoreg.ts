/**
 * The dev istiod's WorkloadEntry auto-registration and health, as istiod's controller does them (istio/istio
 * `pilot/pkg/autoregistration/controller.go` and `internal/autoregistration/controller.go`, 1.2x; summary in
 * docs/protocols.md, "Auto-registration and health"):
 *
 * - A proxy whose node carries `AUTO_REGISTER_GROUP`, a NAMESPACE and an IP (INSTANCE_IPS, else the node id's)
 *   gets a WorkloadEntry `<group>-<IP with ':' → '-'>[-<NETWORK>]` (the last 253 characters) in its namespace. When
 *   it does not exist yet it is made from the WorkloadGroup: the template's spec, the address, labels template <
 *   group metadata < node LABELS, annotations `istio.io/autoRegistrationGroup` + the group's metadata annotations
 *   (+ `proxy.istio.io/health-checks-enabled: "true"` when the node's PROXY_CONFIG has a readinessProbe), an owner
 *   reference to the group (controller), and the connect annotations. A missing group ends the stream with
 *   FAILED_PRECONDITION. A node without group, namespace or IP is simply not registered.
 * - The proxy must have a verified identity in the entry's namespace with the entry's service account (when it names
 *   one); else the stream ends (the plain-text port never registers anyone).
 * - Connect: `istio.io/workloadController` = this istiod, `istio.io/connectedAt` = the connect time (RFC 3339 with
 *   nanoseconds, Go's RFC3339Nano), `istio.io/disconnectedAt` removed. Streams are counted per network + IP + entry
 *   + namespace; when the last one closes, `connectedAt` is replaced by `disconnectedAt`, and the entry is deleted
 *   once the grace period (PILOT_WORKLOAD_ENTRY_GRACE_PERIOD, 10 s) has passed without a reconnect.
 * - Health: a `HealthInformation` DiscoveryRequest sets the entry's `Healthy` condition (True with no error_detail,
 *   else False with its message), only while this istiod controls the entry.
 *
 * Every wait goes through the clock port; `close()` cancels pending deletions.
 */
import type { Clock } from "../platform/clock.js";
import type { Logger } from "../platform/logger.js";
import type { StructValue, XdsNode } from "../xds/protos.js";
import { HEALTH_CHECKS_ANNOTATION } from "./pilot-registry.js";
import type { WorkloadEntryObject } from "./pilot-registry.js";
import { StoreError } from "./store.js";
import type { KubeObject, ObjectStore } from "./store.js";
import { GRPC, metadataText } from "./xds-wire.js";

export const AUTO_REGISTRATION_GROUP_ANNOTATION = "istio.io/autoRegistrationGroup";
export const WORKLOAD_CONTROLLER_ANNOTATION = "istio.io/workloadController";
export const CONNECTED_AT_ANNOTATION = "istio.io/connectedAt";
export const DISCONNECTED_AT_ANNOTATION = "istio.io/disconnectedAt";
/** istiod's PILOT_WORKLOAD_ENTRY_GRACE_PERIOD default. */
export const DEFAULT_GRACE_PERIOD_MS = 10_000;

const NETWORKING = "networking.istio.io/v1";

/** A stream's end of the registration: ends it with this gRPC status. */
export class AutoRegistrationError extends Error {
  readonly grpcCode: number;
  constructor(grpcCode: number, message: string) {
    super(message);
    this.name = "AutoRegistrationError";
    this.grpcCode = grpcCode;
  }
}

export interface WorkloadGroupObject extends KubeObject {
  readonly spec?: {
    readonly metadata?: { readonly labels?: Record<string, string>; readonly annotations?: Record<string, string> };
    readonly template?: Record<string, unknown> & { readonly serviceAccount?: string };
    readonly probe?: Record<string, unknown>;
  };
}

/** The registration of one stream, handed back on disconnect and health reports. */
export interface RegisteredProxy {
  readonly entryName: string;
  readonly namespace: string;
  readonly key: string;
  readonly connectedAt: number;
}

export interface ConnectingProxy {
  readonly node: XdsNode;
  /** The verified identity that matched the node, if any. */
  readonly identity: { readonly namespace: string; readonly serviceAccount: string } | undefined;
}

export interface AutoRegistrationOptions {
  readonly store: ObjectStore;
  readonly clock: Clock;
  readonly gracePeriodMs?: number;
  /** This istiod's name in `istio.io/workloadController`. */
  readonly instanceId?: string;
  readonly logger?: Logger;
}

/** Go's time.RFC3339Nano in UTC: fraction without trailing zeros, none at all on a whole second. */
export function rfc3339Nano(ms: number): string {
  const iso = new Date(ms).toISOString(); // 2026-01-01T00:00:00.120Z
  return iso.replace(/\.(\d+)Z$/, (_, f: string) => (/^0+$/.test(f) ? "Z" : `.${f.replace(/0+$/, "")}Z`));
}

function firstIp(node: XdsNode): string {
  const ips = metadataText(node, "INSTANCE_IPS");
  const first = ips.split(",")[0]?.trim() ?? "";
  return first !== "" ? first : (node.id.split("~")[1] ?? "");
}

/** istiod's GenerateWorkloadEntryName: "" when the node is not eligible. */
export function autoRegisteredEntryName(node: XdsNode): string {
  const group = metadataText(node, "AUTO_REGISTER_GROUP");
  const ip = firstIp(node);
  if (group === "" || ip === "" || metadataText(node, "NAMESPACE") === "") return "";
  const network = metadataText(node, "NETWORK");
  const name = [group, ip.replaceAll(":", "-"), ...(network === "" ? [] : [network])].join("-");
  return name.length > 253 ? name.slice(name.length - 253) : name;
}

function stringMap(value: StructValue | undefined): Record<string, string> {
  if (value === null || value === undefined || typeof value !== "object" || Array.isArray(value)) return {};
  return Object.fromEntries(Object.entries(value).filter((e): e is [string, string] => typeof e[1] === "string"));
}

function hasReadinessProbe(node: XdsNode): boolean {
  const pc = node.metadata["PROXY_CONFIG"];
  if (pc === null || pc === undefined || typeof pc !== "object" || Array.isArray(pc)) return false;
  const probe = pc["readinessProbe"];
  return probe !== undefined && probe !== null;
}

/** istiod's WorkloadEntryFromGroup. */
export function workloadEntryFromGroup(name: string, node: XdsNode, group: WorkloadGroupObject): KubeObject {
  const spec = group.spec ?? {};
  const template = structuredClone(spec.template ?? {});
  const labels = {
    ...((template["labels"] as Record<string, string> | undefined) ?? {}),
    ...(spec.metadata?.labels ?? {}),
    ...stringMap(node.metadata["LABELS"]),
  };
  const annotations: Record<string, string> = {
    [AUTO_REGISTRATION_GROUP_ANNOTATION]: group.metadata.name,
    ...(spec.metadata?.annotations ?? {}),
  };
  if (hasReadinessProbe(node)) annotations[HEALTH_CHECKS_ANNOTATION] = "true";
  const network = metadataText(node, "NETWORK");
  return {
    apiVersion: NETWORKING,
    kind: "WorkloadEntry",
    metadata: {
      name,
      namespace: metadataText(node, "NAMESPACE"),
      labels,
      annotations,
      ownerReferences: [
        {
          apiVersion: NETWORKING,
          kind: "WorkloadGroup",
          name: group.metadata.name,
          uid: group.metadata.uid ?? "",
          controller: true,
        },
      ],
    },
    spec: {
      ...template,
      address: firstIp(node),
      labels,
      ...(network === "" ? {} : { network }),
    },
  };
}

function isNotFound(error: unknown): boolean {
  return error instanceof StoreError && error.reason === "NotFound";
}

export class AutoRegistration {
  readonly #store: ObjectStore;
  readonly #clock: Clock;
  readonly #grace: number;
  readonly #instanceId: string;
  readonly #logger: Logger | undefined;
  readonly #connections = new Map<string, number>();
  readonly #closing = new AbortController();
  readonly #pending = new Set<Promise<void>>();

  constructor(options: AutoRegistrationOptions) {
    this.#store = options.store;
    this.#clock = options.clock;
    this.#grace = options.gracePeriodMs ?? DEFAULT_GRACE_PERIOD_MS;
    this.#instanceId = options.instanceId ?? "istiod-istio-vm-dev";
    this.#logger = options.logger;
  }

  get gracePeriodMs(): number {
    return this.#grace;
  }

  /**
   * Called with a stream's first request (after its identity check): registers the proxy, or returns undefined when
   * it does not ask for it. Throws AutoRegistrationError to end the stream.
   */
  connect(proxy: ConnectingProxy): RegisteredProxy | undefined {
    const { node } = proxy;
    const entryName = autoRegisteredEntryName(node);
    if (entryName === "") {
      if (metadataText(node, "AUTO_REGISTER_GROUP") !== "")
        this.#logger?.error("auto-registration failed: the node has no namespace or no IP address", { node: node.id });
      return undefined;
    }
    const namespace = metadataText(node, "NAMESPACE");
    const connectedAt = this.#clock.now();
    const existing = this.#store.tryGet("workloadentries", namespace, entryName) as WorkloadEntryObject | undefined;
    if (existing !== undefined) {
      this.#ensureCanControl(proxy, namespace, existing.spec?.serviceAccount ?? "");
      this.#markConnected(namespace, entryName, connectedAt);
      this.#logger?.info("updated auto-registered WorkloadEntry", { entry: `${namespace}/${entryName}` });
    } else {
      const groupName = metadataText(node, "AUTO_REGISTER_GROUP");
      const group = this.#store.tryGet("workloadgroups", namespace, groupName) as WorkloadGroupObject | undefined;
      if (group === undefined) {
        throw new AutoRegistrationError(
          GRPC.FAILED_PRECONDITION,
          `auto-registration WorkloadEntry of ${node.id} failed: cannot find WorkloadGroup ${namespace}/${groupName}`,
        );
      }
      const entry = workloadEntryFromGroup(entryName, node, group);
      const serviceAccount = (entry["spec"] as { serviceAccount?: string }).serviceAccount ?? "";
      this.#ensureCanControl(proxy, namespace, serviceAccount);
      entry.metadata.annotations = { ...entry.metadata.annotations, ...this.#connectMeta(connectedAt) };
      this.#store.create("workloadentries", entry);
      this.#logger?.info("auto-registered WorkloadEntry", {
        entry: `${namespace}/${entryName}`,
        healthChecks: entry.metadata.annotations[HEALTH_CHECKS_ANNOTATION] === "true",
      });
    }
    const key = [metadataText(node, "NETWORK"), firstIp(node), entryName, namespace].join("~");
    this.#connections.set(key, (this.#connections.get(key) ?? 0) + 1);
    return { entryName, namespace, key, connectedAt };
  }

  /** Called when a registered stream closes: the last stream of a proxy starts the grace period. */
  disconnect(proxy: RegisteredProxy): void {
    const count = this.#connections.get(proxy.key) ?? 0;
    if (count > 1) {
      this.#connections.set(proxy.key, count - 1);
      return;
    }
    this.#connections.delete(proxy.key);
    const disconnectedAt = this.#clock.now();
    const entry = this.#store.tryGet("workloadentries", proxy.namespace, proxy.entryName);
    if (entry === undefined) return;
    const annotations = { ...entry.metadata.annotations };
    const lastConnect = Date.parse(annotations[CONNECTED_AT_ANNOTATION] ?? "");
    // A later connect (to this or another istiod) owns the entry now.
    if (!Number.isNaN(lastConnect) && lastConnect > proxy.connectedAt) return;
    if (annotations[WORKLOAD_CONTROLLER_ANNOTATION] !== this.#instanceId) return;
    Reflect.deleteProperty(annotations, CONNECTED_AT_ANNOTATION);
    annotations[DISCONNECTED_AT_ANNOTATION] = rfc3339Nano(disconnectedAt);
    this.#store.update("workloadentries", { ...entry, metadata: { ...entry.metadata, annotations } });
    this.#logger?.info("proxy of auto-registered WorkloadEntry disconnected", {
      entry: `${proxy.namespace}/${proxy.entryName}`,
      deleteAfterMs: this.#grace,
    });
    const pending = this.#clock
      .sleep(this.#grace, this.#closing.signal)
      .then(() => {
        this.#cleanup(proxy.namespace, proxy.entryName);
      })
      .catch(() => undefined)
      .finally(() => this.#pending.delete(pending));
    this.#pending.add(pending);
  }

  /** A HealthInformation request: `error` undefined is healthy. */
  reportHealth(proxy: RegisteredProxy, error: { readonly message: string } | undefined): void {
    const entry = this.#store.tryGet("workloadentries", proxy.namespace, proxy.entryName);
    if (entry === undefined || entry.metadata.annotations?.[WORKLOAD_CONTROLLER_ANNOTATION] !== this.#instanceId)
      return;
    const now = rfc3339Nano(this.#clock.now());
    const condition = {
      type: "Healthy",
      status: error === undefined ? "True" : "False",
      lastProbeTime: now,
      lastTransitionTime: now,
      ...(error === undefined ? {} : { message: error.message }),
    };
    const status = (entry["status"] as { conditions?: { type: string }[] } | undefined) ?? {};
    const conditions = [...(status.conditions ?? []).filter((c) => c.type !== "Healthy"), condition];
    try {
      this.#store.update("workloadentries", { ...entry, status: { ...status, conditions } });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    this.#logger?.info("WorkloadEntry health", {
      entry: `${proxy.namespace}/${proxy.entryName}`,
      healthy: error === undefined,
      ...(error === undefined ? {} : { message: error.message }),
    });
  }

  /** Cancels pending deletions and waits for them to settle. */
  async close(): Promise<void> {
    this.#closing.abort();
    await Promise.all([...this.#pending]);
  }

  #connectMeta(at: number): Record<string, string> {
    return { [WORKLOAD_CONTROLLER_ANNOTATION]: this.#instanceId, [CONNECTED_AT_ANNOTATION]: rfc3339Nano(at) };
  }

  #ensureCanControl(proxy: ConnectingProxy, namespace: string, serviceAccount: string): void {
    const id = proxy.identity;
    const problem =
      id === undefined
        ? "registration of WorkloadEntry requires a verified identity"
        : id.namespace !== namespace
          ? `registration of WorkloadEntry namespace mismatch: "${id.namespace}" vs "${namespace}"`
          : serviceAccount !== "" && id.serviceAccount !== serviceAccount
            ? `registration of WorkloadEntry service account mismatch: "${id.serviceAccount}" vs "${serviceAccount}"`
            : undefined;
    if (problem !== undefined) throw new AutoRegistrationError(GRPC.UNKNOWN, problem);
  }

  #markConnected(namespace: string, name: string, at: number): void {
    const entry = this.#store.get("workloadentries", namespace, name);
    const last = Date.parse(entry.metadata.annotations?.[CONNECTED_AT_ANNOTATION] ?? "");
    if (!Number.isNaN(last) && at < last) return;
    const annotations = { ...entry.metadata.annotations, ...this.#connectMeta(at) };
    Reflect.deleteProperty(annotations, DISCONNECTED_AT_ANNOTATION);
    this.#store.update("workloadentries", { ...entry, metadata: { ...entry.metadata, annotations } });
  }

  /** istiod's shouldCleanupEntry + cleanupEntry for an entry whose grace period ran out. */
  #cleanup(namespace: string, name: string): void {
    const entry = this.#store.tryGet("workloadentries", namespace, name);
    const annotations = entry?.metadata.annotations ?? {};
    if (entry === undefined || (annotations[AUTO_REGISTRATION_GROUP_ANNOTATION] ?? "") === "") return;
    if ((annotations[CONNECTED_AT_ANNOTATION] ?? "") !== "") return; // reconnected
    const disconnectedAt = Date.parse(annotations[DISCONNECTED_AT_ANNOTATION] ?? "");
    if (Number.isNaN(disconnectedAt) || this.#clock.now() - disconnectedAt < this.#grace) return;
    try {
      this.#store.delete("workloadentries", namespace, name);
      this.#logger?.info("cleaned up auto-registered WorkloadEntry", { entry: `${namespace}/${name}` });
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
  }
}
