/**
 * Reads the Kubernetes protobuf request encoding (`application/vnd.kubernetes.protobuf`) for the built-in objects the
 * dev API server stores, because kubectl's typed commands (`kubectl create secret|configmap|service|namespace|
 * serviceaccount|token`) send it. The envelope is the 4-byte magic "k8s\0" followed by a runtime.Unknown message
 * (typeMeta{apiVersion, kind}, raw = the object). The messages are declared in proto/kubernetes.proto with the field
 * numbers of k8s.io/api's generated.proto, compiled by scripts/gen-descriptors.mjs, and decoded by protobufjs; the
 * root is built on first use. Responses stay JSON (clients send `Accept: application/vnd.kubernetes.protobuf,
 * application/json`).
 */
import protobuf from "protobufjs";
import descriptor from "./kube-descriptor.json" with { type: "json" };

export class ProtobufError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtobufError";
  }
}

/** Message types by "apiVersion/kind". */
const OBJECTS: Readonly<Record<string, string>> = {
  "v1/Namespace": "Namespace",
  "v1/Secret": "Secret",
  "v1/ConfigMap": "ConfigMap",
  "v1/ServiceAccount": "ServiceAccount",
  "v1/Service": "Service",
  "v1/Endpoints": "Endpoints",
  "authentication.k8s.io/v1/TokenRequest": "TokenRequest",
};

let root: protobuf.Root | undefined;

function messageType(name: string): protobuf.Type {
  root ??= protobuf.Root.fromJSON(descriptor.root);
  return root.lookupType(`k8s.${name}`);
}

function decode(type: protobuf.Type, bytes: Uint8Array): protobuf.Message {
  try {
    // A plain Uint8Array, not a Buffer: protobufjs' Buffer reader clamps a string that runs past the end.
    return type.decode(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (error) {
    throw new ProtobufError((error as Error).message);
  }
}

const CONVERT: protobuf.IConversionOptions = { longs: Number, bytes: String };

/** A scalar or message value as the JSON encoding of the same object has it. */
function toJson(field: protobuf.Field, value: unknown): unknown {
  const type = field.resolvedType;
  if (!(type instanceof protobuf.Type)) return value;
  const object = value as Record<string, unknown>;
  switch (type.name) {
    case "Time":
      // metav1.Time is RFC 3339 with second precision in JSON.
      return new Date(((object["seconds"] as number | undefined) ?? 0) * 1000).toISOString().replace(/\.\d+Z$/, "Z");
    case "IntOrString":
      return object["type"] === 1 ? (object["strVal"] ?? "") : (object["intVal"] ?? 0);
    default:
      return fromObject(type, object);
  }
}

/**
 * protobufjs' plain object → the JSON object. Go's encoder writes the zero values of non-pointer fields, which JSON
 * clients omit (omitempty) and the server's defaulting must see as absent; empty maps and lists are absent too.
 */
function fromObject(type: protobuf.Type, object: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const field of type.fieldsArray) {
    const value = object[field.name];
    if (value === undefined || value === null) continue;
    if (field.map) {
      const entries = Object.entries(value as Record<string, unknown>);
      if (entries.length > 0) out[field.name] = Object.fromEntries(entries);
    } else if (field.repeated) {
      const list = value as unknown[];
      if (list.length > 0) out[field.name] = list.map((item) => toJson(field, item));
    } else if (field.resolvedType instanceof protobuf.Type) {
      out[field.name] = toJson(field, value);
    } else if (value !== "" && value !== 0 && value !== false) {
      out[field.name] = value;
    }
  }
  return out;
}

export const PROTOBUF_CONTENT_TYPE = "application/vnd.kubernetes.protobuf";
const MAGIC = Buffer.from([0x6b, 0x38, 0x73, 0x00]);

/** Decodes a protobuf-encoded request body into the JSON object the server would have received. */
export function decodeKubernetesProtobuf(body: Buffer): Record<string, unknown> {
  if (body.length < 4 || !body.subarray(0, 4).equals(MAGIC)) throw new ProtobufError("missing the k8s protobuf magic");
  const unknownType = messageType("Unknown");
  const envelope = unknownType.toObject(decode(unknownType, body.subarray(4)), { bytes: Buffer });
  const typeMeta = (envelope["typeMeta"] ?? {}) as { apiVersion?: string; kind?: string };
  const contentEncoding = envelope["contentEncoding"] as string | undefined;
  if (contentEncoding !== undefined && contentEncoding !== "") {
    throw new ProtobufError(`content encoding ${contentEncoding} is not supported`);
  }
  const gvk = `${typeMeta.apiVersion ?? ""}/${typeMeta.kind ?? ""}`;
  const name = OBJECTS[gvk];
  if (name === undefined) throw new ProtobufError(`protobuf for ${gvk} is not supported; send JSON`);
  const type = messageType(name);
  const raw = (envelope["raw"] as Buffer | undefined) ?? Buffer.alloc(0);
  return {
    apiVersion: typeMeta.apiVersion,
    kind: typeMeta.kind,
    ...fromObject(type, type.toObject(decode(type, raw), CONVERT)),
  };
}
