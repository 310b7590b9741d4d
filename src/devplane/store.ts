/**
 * The dev control plane's in-memory object store: Kubernetes objects as plain JSON, keyed by resource, namespace and
 * name, with resourceVersion optimistic concurrency. The Kubernetes API server, kube-dns, Pilot and the CA of
 * `istio-vm dev` all read from this one store.
 */
import { randomUUID } from "node:crypto";
import { reasonError } from "../platform/errors.js";

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  creationTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  [key: string]: unknown;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [key: string]: unknown;
}

/** Resource names as in API paths: "services", "endpoints", "secrets", "serviceaccounts", "namespaces", … */
export type Resource = string;

export type StoreErrorReason = "NotFound" | "AlreadyExists" | "Conflict" | "Invalid";

export class StoreError extends reasonError<StoreErrorReason>("StoreError") {}

export type StoreEvent = { type: "ADDED" | "MODIFIED" | "DELETED"; resource: Resource; object: KubeObject };

function key(namespace: string | undefined, name: string): string {
  return `${namespace ?? ""}/${name}`;
}

function clone<T>(value: T): T {
  return structuredClone(value);
}

export class ObjectStore {
  readonly #objects = new Map<Resource, Map<string, KubeObject>>();
  readonly #listeners = new Set<(event: StoreEvent) => void>();
  #version = 1;
  /** Counts every call, so benchmarks can report how many API requests a command made. */
  operations = 0;

  #table(resource: Resource): Map<string, KubeObject> {
    let table = this.#objects.get(resource);
    if (table === undefined) {
      table = new Map();
      this.#objects.set(resource, table);
    }
    return table;
  }

  #emit(event: StoreEvent): void {
    for (const listener of this.#listeners) listener(event);
  }

  /** The store's current resourceVersion (for list metadata). */
  get resourceVersion(): string {
    return String(this.#version);
  }

  get(resource: Resource, namespace: string | undefined, name: string): KubeObject {
    this.operations++;
    const found = this.#table(resource).get(key(namespace, name));
    if (found === undefined) throw new StoreError("NotFound", `${resource} "${name}" not found`);
    return clone(found);
  }

  tryGet(resource: Resource, namespace: string | undefined, name: string): KubeObject | undefined {
    const found = this.#table(resource).get(key(namespace, name));
    return found === undefined ? undefined : clone(found);
  }

  /** Objects of a resource, in one namespace or (namespace undefined) in all, sorted by namespace and name. */
  list(resource: Resource, namespace?: string): KubeObject[] {
    this.operations++;
    return [...this.#table(resource).values()]
      .filter((o) => namespace === undefined || o.metadata.namespace === namespace)
      .sort((a, b) =>
        key(a.metadata.namespace, a.metadata.name).localeCompare(key(b.metadata.namespace, b.metadata.name)),
      )
      .map(clone);
  }

  create(resource: Resource, object: KubeObject): KubeObject {
    this.operations++;
    const table = this.#table(resource);
    const k = key(object.metadata.namespace, object.metadata.name);
    if (table.has(k)) throw new StoreError("AlreadyExists", `${resource} "${object.metadata.name}" already exists`);
    const stored = clone(object);
    stored.metadata.uid = randomUUID();
    stored.metadata.resourceVersion = String(++this.#version);
    stored.metadata.creationTimestamp = new Date().toISOString().replace(/\.\d+Z$/, "Z");
    table.set(k, stored);
    this.#emit({ type: "ADDED", resource, object: clone(stored) });
    return clone(stored);
  }

  /**
   * Replaces an object. When the update carries a resourceVersion it must equal the stored one (optimistic
   * concurrency, as the Kubernetes API server does), else a Conflict error.
   */
  update(resource: Resource, object: KubeObject): KubeObject {
    this.operations++;
    const table = this.#table(resource);
    const k = key(object.metadata.namespace, object.metadata.name);
    const current = table.get(k);
    if (current === undefined) throw new StoreError("NotFound", `${resource} "${object.metadata.name}" not found`);
    const expected = object.metadata.resourceVersion;
    if (expected !== undefined && expected !== "" && expected !== current.metadata.resourceVersion) {
      throw new StoreError(
        "Conflict",
        `Operation cannot be fulfilled on ${resource} "${object.metadata.name}": the object has been modified; please apply your changes to the latest version and try again`,
      );
    }
    const stored = clone(object);
    if (current.metadata.uid !== undefined) stored.metadata.uid = current.metadata.uid;
    if (current.metadata.creationTimestamp !== undefined) {
      stored.metadata.creationTimestamp = current.metadata.creationTimestamp;
    }
    stored.metadata.resourceVersion = String(++this.#version);
    table.set(k, stored);
    this.#emit({ type: "MODIFIED", resource, object: clone(stored) });
    return clone(stored);
  }

  delete(resource: Resource, namespace: string | undefined, name: string): KubeObject {
    this.operations++;
    const table = this.#table(resource);
    const k = key(namespace, name);
    const current = table.get(k);
    if (current === undefined) throw new StoreError("NotFound", `${resource} "${name}" not found`);
    table.delete(k);
    ++this.#version;
    this.#emit({ type: "DELETED", resource, object: clone(current) });
    return clone(current);
  }

  /** Calls `listener` on every change; returns a function that unsubscribes. */
  watch(listener: (event: StoreEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}
