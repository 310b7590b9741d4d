/**
 * A request body made into the object to store, with kube-apiserver's checks and messages: kind and name match the
 * path, names are RFC 1123 labels or subdomains, `generateName`, the namespace taken from the path, and Secrets'
 * `stringData` folded into base64 `data`.
 */
import { randomUUID } from "node:crypto";
import type { ResourceDefinition } from "./kube-resources.js";
import { apiVersionOf } from "./kube-resources.js";
import { badRequest, invalid } from "./kube-status.js";
import type { KubeObject } from "./store.js";

export interface Target {
  readonly def: ResourceDefinition;
  readonly namespace: string | undefined;
  readonly name: string | undefined;
  readonly subresource: string | undefined;
}

const NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

export function prepareObject(target: Target, body: unknown, verb: "create" | "update"): KubeObject {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw badRequest("the request body must be a JSON object");
  }
  const object = structuredClone(body) as KubeObject;
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
      throw invalid(def, "", [{ field: "metadata.name", message: "Required value: name or generateName is required" }]);
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
  if (def.name === "secrets") normalizeSecret(def, object, name);
  return object;
}

function normalizeSecret(def: ResourceDefinition, object: KubeObject, name: string): void {
  const data = { ...((object["data"] as Record<string, string> | undefined) ?? {}) };
  for (const [key, value] of Object.entries(data)) {
    if (typeof value !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(value)) {
      throw invalid(def, name, [{ field: `data[${key}]`, message: "Invalid value: not base64-encoded" }]);
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
