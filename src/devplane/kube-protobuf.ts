/**
 * Reads the Kubernetes protobuf request encoding (`application/vnd.kubernetes.protobuf`) for the built-in objects the
 * dev API server stores, because kubectl's typed commands (`kubectl create secret|configmap|service|namespace|
 * serviceaccount|token`) send it. The envelope is the 4-byte magic "k8s\0" followed by a runtime.Unknown message
 * (typeMeta{apiVersion, kind}, raw = the object); the object is decoded with the field numbers of k8s.io/api's
 * generated.proto for the fields this server uses. Unknown fields are skipped. Responses stay JSON (clients send
 * `Accept: application/vnd.kubernetes.protobuf, application/json`).
 */

export class ProtobufError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ProtobufError";
  }
}

type Scalar = "string" | "bytes" | "int" | "bool";
interface MessageSchema {
  readonly [field: number]: FieldSpec;
}
interface FieldSpec {
  readonly name: string;
  readonly type: Scalar | MessageSchema | "time" | "intOrString";
  readonly repeated?: boolean;
  /** map<string, V>: repeated entries {1: key, 2: value}. */
  readonly map?: "string" | "bytes";
}

const TYPE_META: MessageSchema = { 1: { name: "apiVersion", type: "string" }, 2: { name: "kind", type: "string" } };

const OBJECT_META: MessageSchema = {
  1: { name: "name", type: "string" },
  2: { name: "generateName", type: "string" },
  3: { name: "namespace", type: "string" },
  5: { name: "uid", type: "string" },
  6: { name: "resourceVersion", type: "string" },
  7: { name: "generation", type: "int" },
  8: { name: "creationTimestamp", type: "time" },
  11: { name: "labels", type: "string", map: "string" },
  12: { name: "annotations", type: "string", map: "string" },
  14: { name: "finalizers", type: "string", repeated: true },
};

const metadata: FieldSpec = { name: "metadata", type: OBJECT_META };

const SERVICE_PORT: MessageSchema = {
  1: { name: "name", type: "string" },
  2: { name: "protocol", type: "string" },
  3: { name: "port", type: "int" },
  4: { name: "targetPort", type: "intOrString" },
  5: { name: "nodePort", type: "int" },
  6: { name: "appProtocol", type: "string" },
};

const SERVICE_SPEC: MessageSchema = {
  1: { name: "ports", type: SERVICE_PORT, repeated: true },
  2: { name: "selector", type: "string", map: "string" },
  3: { name: "clusterIP", type: "string" },
  4: { name: "type", type: "string" },
  5: { name: "externalIPs", type: "string", repeated: true },
  7: { name: "sessionAffinity", type: "string" },
  8: { name: "loadBalancerIP", type: "string" },
  9: { name: "loadBalancerSourceRanges", type: "string", repeated: true },
  10: { name: "externalName", type: "string" },
  11: { name: "externalTrafficPolicy", type: "string" },
  12: { name: "healthCheckNodePort", type: "int" },
  13: { name: "publishNotReadyAddresses", type: "bool" },
  17: { name: "ipFamilyPolicy", type: "string" },
  18: { name: "clusterIPs", type: "string", repeated: true },
  19: { name: "ipFamilies", type: "string", repeated: true },
  20: { name: "allocateLoadBalancerNodePorts", type: "bool" },
  21: { name: "loadBalancerClass", type: "string" },
  22: { name: "internalTrafficPolicy", type: "string" },
};

const ENDPOINT_SUBSET: MessageSchema = {
  1: {
    name: "addresses",
    type: {
      1: { name: "ip", type: "string" },
      3: { name: "hostname", type: "string" },
      4: { name: "nodeName", type: "string" },
    },
    repeated: true,
  },
  2: { name: "notReadyAddresses", type: { 1: { name: "ip", type: "string" } }, repeated: true },
  3: {
    name: "ports",
    type: {
      1: { name: "name", type: "string" },
      2: { name: "port", type: "int" },
      3: { name: "protocol", type: "string" },
      4: { name: "appProtocol", type: "string" },
    },
    repeated: true,
  },
};

/** Object schemas by "apiVersion/kind". */
const OBJECTS: Readonly<Record<string, MessageSchema>> = {
  "v1/Namespace": { 1: metadata },
  "v1/Secret": {
    1: metadata,
    2: { name: "data", type: "bytes", map: "bytes" },
    3: { name: "type", type: "string" },
    4: { name: "stringData", type: "string", map: "string" },
    5: { name: "immutable", type: "bool" },
  },
  "v1/ConfigMap": {
    1: metadata,
    2: { name: "data", type: "string", map: "string" },
    3: { name: "binaryData", type: "bytes", map: "bytes" },
    4: { name: "immutable", type: "bool" },
  },
  "v1/ServiceAccount": { 1: metadata, 4: { name: "automountServiceAccountToken", type: "bool" } },
  "v1/Service": { 1: metadata, 2: { name: "spec", type: SERVICE_SPEC } },
  "v1/Endpoints": { 1: metadata, 2: { name: "subsets", type: ENDPOINT_SUBSET, repeated: true } },
  "authentication.k8s.io/v1/TokenRequest": {
    1: metadata,
    2: {
      name: "spec",
      type: { 1: { name: "audiences", type: "string", repeated: true }, 4: { name: "expirationSeconds", type: "int" } },
    },
  },
};

class Reader {
  pos = 0;
  readonly buf: Buffer;
  constructor(buf: Buffer) {
    this.buf = buf;
  }

  get done(): boolean {
    return this.pos >= this.buf.length;
  }

  varint(): bigint {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (this.pos >= this.buf.length) throw new ProtobufError("truncated varint");
      const byte = this.buf[this.pos++] ?? 0;
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7n;
      if (shift > 63n) throw new ProtobufError("varint too long");
    }
  }

  bytes(): Buffer {
    const length = Number(this.varint());
    if (this.pos + length > this.buf.length) throw new ProtobufError("truncated field");
    const out = this.buf.subarray(this.pos, this.pos + length);
    this.pos += length;
    return out;
  }

  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        this.pos += 8;
        return;
      case 2:
        this.bytes();
        return;
      case 5:
        this.pos += 4;
        return;
      default:
        throw new ProtobufError(`unsupported wire type ${wireType}`);
    }
  }
}

function toInt(value: bigint): number {
  // int32/int64 fields are two's complement varints.
  return Number(BigInt.asIntN(64, value));
}

function decodeScalar(type: Scalar | "time" | "intOrString", reader: Reader): unknown {
  switch (type) {
    case "string":
      return reader.bytes().toString("utf8");
    case "bytes":
      return reader.bytes().toString("base64");
    case "int":
      return toInt(reader.varint());
    case "bool":
      return reader.varint() !== 0n;
    case "time": {
      const inner = new Reader(reader.bytes());
      let seconds = 0;
      while (!inner.done) {
        const key = Number(inner.varint());
        if (key >> 3 === 1 && (key & 7) === 0) seconds = toInt(inner.varint());
        else inner.skip(key & 7);
      }
      return new Date(seconds * 1000).toISOString().replace(/\.\d+Z$/, "Z");
    }
    case "intOrString": {
      const inner = new Reader(reader.bytes());
      let kind = 0;
      let intVal = 0;
      let strVal = "";
      while (!inner.done) {
        const key = Number(inner.varint());
        const field = key >> 3;
        if (field === 1) kind = toInt(inner.varint());
        else if (field === 2) intVal = toInt(inner.varint());
        else if (field === 3) strVal = inner.bytes().toString("utf8");
        else inner.skip(key & 7);
      }
      return kind === 1 ? strVal : intVal;
    }
  }
}

function decodeMessage(buf: Buffer, schema: MessageSchema): Record<string, unknown> {
  const reader = new Reader(buf);
  const out: Record<string, unknown> = {};
  while (!reader.done) {
    const key = Number(reader.varint());
    const field = key >> 3;
    const wireType = key & 7;
    const spec = schema[field];
    if (spec === undefined) {
      reader.skip(wireType);
      continue;
    }
    if (spec.map !== undefined) {
      const entry = new Reader(reader.bytes());
      let k = "";
      let v: unknown = spec.map === "bytes" ? "" : "";
      while (!entry.done) {
        const ek = Number(entry.varint());
        if (ek >> 3 === 1) k = entry.bytes().toString("utf8");
        else if (ek >> 3 === 2) v = decodeScalar(spec.map, entry);
        else entry.skip(ek & 7);
      }
      const map = (out[spec.name] ?? {}) as Record<string, unknown>;
      map[k] = v;
      out[spec.name] = map;
      continue;
    }
    let value: unknown;
    if (typeof spec.type === "object") {
      if (wireType !== 2) throw new ProtobufError(`field ${spec.name}: expected a message`);
      value = decodeMessage(reader.bytes(), spec.type);
    } else if (spec.repeated === true && wireType === 2 && (spec.type === "int" || spec.type === "bool")) {
      // Packed repeated scalars.
      const packed = new Reader(reader.bytes());
      const list = (out[spec.name] ?? []) as unknown[];
      while (!packed.done) list.push(decodeScalar(spec.type, packed));
      out[spec.name] = list;
      continue;
    } else {
      value = decodeScalar(spec.type, reader);
    }
    if (spec.repeated === true) {
      const list = (out[spec.name] ?? []) as unknown[];
      list.push(value);
      out[spec.name] = list;
    } else if (value !== "" && value !== 0 && value !== false) {
      // Go's encoder writes zero values of non-pointer fields; JSON clients omit them (omitempty), and the
      // server's defaulting must see them as absent.
      out[spec.name] = value;
    }
  }
  return out;
}

export const PROTOBUF_CONTENT_TYPE = "application/vnd.kubernetes.protobuf";
const MAGIC = Buffer.from([0x6b, 0x38, 0x73, 0x00]);

/** Decodes a protobuf-encoded request body into the JSON object the server would have received. */
export function decodeKubernetesProtobuf(body: Buffer): Record<string, unknown> {
  if (body.length < 4 || !body.subarray(0, 4).equals(MAGIC)) throw new ProtobufError("missing the k8s protobuf magic");
  const unknown = decodeMessage(body.subarray(4), {
    1: { name: "typeMeta", type: TYPE_META },
    2: { name: "raw", type: "bytes" },
    3: { name: "contentEncoding", type: "string" },
  });
  const typeMeta = (unknown["typeMeta"] ?? {}) as { apiVersion?: string; kind?: string };
  if (typeof unknown["contentEncoding"] === "string" && unknown["contentEncoding"] !== "") {
    throw new ProtobufError(`content encoding ${unknown["contentEncoding"]} is not supported`);
  }
  const gvk = `${typeMeta.apiVersion ?? ""}/${typeMeta.kind ?? ""}`;
  const schema = OBJECTS[gvk];
  if (schema === undefined) throw new ProtobufError(`protobuf for ${gvk} is not supported; send JSON`);
  const raw = Buffer.from(typeof unknown["raw"] === "string" ? unknown["raw"] : "", "base64");
  return { apiVersion: typeMeta.apiVersion, kind: typeMeta.kind, ...decodeMessage(raw, schema) };
}
