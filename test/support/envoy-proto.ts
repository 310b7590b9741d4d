/**
 * Validates an Envoy bootstrap (proto3 JSON, snake_case field names) against Envoy's own protos from
 * `@grpc/grpc-js-xds`' deps/envoy-api. protobufjs ignores unknown keys, so the walker below checks every key itself:
 * the field exists, the JSON type matches the proto type (enums by name, Durations as "1.5s", 64-bit integers as
 * numbers or strings, wrappers as their primitive), at most one member of each oneof, no deprecated fields, and
 * typed `Any` configs (`@type`) resolved and validated recursively. Struct and Value are free-form by definition.
 */
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const require = createRequire(import.meta.url);
const protoUtil = require("@grpc/proto-loader/build/src/util.js") as {
  loadProtosWithOptionsSync(files: string[], options: { keepCase: boolean; includeDirs: string[] }): protobuf.Root;
};

const repo = new URL("../../", import.meta.url);
const deps = new URL("node_modules/@grpc/grpc-js-xds/deps/", repo);
const INCLUDE_DIRS = [
  ...["envoy-api", "xds", "googleapis", "protoc-gen-validate"].map((d) => fileURLToPath(new URL(d, deps))),
  fileURLToPath(new URL("node_modules/protobufjs", repo)),
];

/** Envoy's own .proto files (not the agent's descriptors), for test clients that must decode what Envoy would. */
export function loadEnvoyProtos(files: string[]): protobuf.Root {
  return protoUtil.loadProtosWithOptionsSync(files, { keepCase: true, includeDirs: INCLUDE_DIRS });
}

/** A gRPC client constructor for one of Envoy's services, e.g. `envoy.service.secret.v3.SecretDiscoveryService`. */
export function envoyServiceClient(file: string, serviceName: string): grpc.ServiceClientConstructor {
  const definition = protoLoader.loadSync(file, {
    keepCase: true,
    includeDirs: INCLUDE_DIRS,
    longs: String,
    enums: String,
    defaults: true,
  });
  let found: unknown = grpc.loadPackageDefinition(definition);
  for (const part of serviceName.split(".")) found = (found as Record<string, unknown> | undefined)?.[part];
  if (typeof found !== "function") throw new Error(`${serviceName} is not a service in ${file}`);
  return found as grpc.ServiceClientConstructor;
}

/** The bootstrap and every typed config our bootstraps may name in an `@type`. */
const FILES = [
  "envoy/config/bootstrap/v3/bootstrap.proto",
  "envoy/extensions/transport_sockets/tls/v3/tls.proto",
  "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
  "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
  "envoy/extensions/filters/http/router/v3/router.proto",
  "envoy/extensions/access_loggers/file/v3/file.proto",
];

let cached: protobuf.Root | undefined;

export function envoyProtoRoot(): protobuf.Root {
  if (cached === undefined) {
    cached = protoUtil.loadProtosWithOptionsSync(FILES, { keepCase: true, includeDirs: INCLUDE_DIRS });
    cached.resolveAll();
  }
  return cached;
}

const INT32 = new Set(["int32", "sint32", "sfixed32"]);
const UINT32 = new Set(["uint32", "fixed32"]);
const INT64 = new Set(["int64", "sint64", "sfixed64", "uint64", "fixed64"]);
const WRAPPERS: Record<string, string> = {
  "google.protobuf.DoubleValue": "double",
  "google.protobuf.FloatValue": "float",
  "google.protobuf.Int64Value": "int64",
  "google.protobuf.UInt64Value": "uint64",
  "google.protobuf.Int32Value": "int32",
  "google.protobuf.UInt32Value": "uint32",
  "google.protobuf.BoolValue": "bool",
  "google.protobuf.StringValue": "string",
  "google.protobuf.BytesValue": "bytes",
};

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function typeName(type: protobuf.Type): string {
  return type.fullName.replace(/^\./, "");
}

class Walker {
  readonly errors: string[] = [];
  readonly typesSeen = new Set<string>();
  constructor(readonly root: protobuf.Root) {}

  fail(path: string, message: string): void {
    this.errors.push(`${path === "" ? "<root>" : path}: ${message}`);
  }

  scalar(path: string, protoType: string, value: unknown): void {
    if (protoType === "string") {
      if (typeof value !== "string") this.fail(path, `expected a string (${protoType}), got ${JSON.stringify(value)}`);
    } else if (protoType === "bool") {
      if (typeof value !== "boolean") this.fail(path, `expected true/false, got ${JSON.stringify(value)}`);
    } else if (protoType === "double" || protoType === "float") {
      if (typeof value !== "number") this.fail(path, `expected a number, got ${JSON.stringify(value)}`);
    } else if (INT32.has(protoType) || UINT32.has(protoType)) {
      const ok =
        typeof value === "number" &&
        Number.isInteger(value) &&
        (UINT32.has(protoType) ? value >= 0 && value <= 0xffffffff : value >= -0x80000000 && value <= 0x7fffffff);
      if (!ok) this.fail(path, `expected a ${protoType}, got ${JSON.stringify(value)}`);
    } else if (INT64.has(protoType)) {
      const ok =
        (typeof value === "number" && Number.isInteger(value)) || (typeof value === "string" && /^-?\d+$/.test(value));
      if (!ok) this.fail(path, `expected a ${protoType} (number or decimal string), got ${JSON.stringify(value)}`);
    } else if (protoType === "bytes") {
      if (typeof value !== "string" || !/^[A-Za-z0-9+/_-]*=*$/.test(value)) this.fail(path, "expected base64 bytes");
    } else {
      this.fail(path, `unknown scalar type ${protoType}`);
    }
  }

  /** Checks `value` as a `type` and returns it in protobufjs' object form (for fromObject/encode). */
  message(path: string, type: protobuf.Type, value: unknown): unknown {
    const name = typeName(type);
    this.typesSeen.add(name);
    switch (name) {
      case "google.protobuf.Duration": {
        const m = typeof value === "string" ? /^(-?)(\d+)(?:\.(\d{1,9}))?s$/.exec(value) : null;
        if (m === null) {
          this.fail(path, `expected a Duration like "1.5s", got ${JSON.stringify(value)}`);
          return {};
        }
        const sign = m[1] === "-" ? -1 : 1;
        return { seconds: sign * Number(m[2]), nanos: sign * Number((m[3] ?? "").padEnd(9, "0")) };
      }
      case "google.protobuf.Timestamp":
        if (typeof value !== "string" || Number.isNaN(Date.parse(value))) this.fail(path, "expected an RFC 3339 time");
        return {};
      case "google.protobuf.Struct":
        if (!isObject(value)) this.fail(path, "expected a JSON object (Struct)");
        return toStruct(value);
      case "google.protobuf.Value":
        return toValue(value);
      case "google.protobuf.ListValue":
        if (!Array.isArray(value)) this.fail(path, "expected a JSON array (ListValue)");
        return { values: Array.isArray(value) ? value.map(toValue) : [] };
      case "google.protobuf.Empty":
        if (!isObject(value) || Object.keys(value).length > 0) this.fail(path, "expected {} (Empty)");
        return {};
      case "google.protobuf.Any":
        return this.any(path, value);
    }
    const wrapped = WRAPPERS[name];
    if (wrapped !== undefined) {
      this.scalar(path, wrapped, value);
      return { value };
    }
    if (!isObject(value)) {
      this.fail(path, `expected an object (${name}), got ${JSON.stringify(value)}`);
      return {};
    }
    return this.fields(path, type, value, new Set());
  }

  any(path: string, value: unknown): unknown {
    if (!isObject(value)) {
      this.fail(path, "expected an object with @type (Any)");
      return {};
    }
    const url = value["@type"];
    if (typeof url !== "string" || !url.startsWith("type.googleapis.com/")) {
      this.fail(path, `Any without a type.googleapis.com/ @type: ${JSON.stringify(url)}`);
      return {};
    }
    const target = url.slice("type.googleapis.com/".length);
    let type: protobuf.Type;
    try {
      type = this.root.lookupType(target);
    } catch {
      this.fail(path, `@type ${target} is not a message type in Envoy's protos`);
      return {};
    }
    this.typesSeen.add(target);
    const inner = this.fields(`${path}<${target}>`, type, value, new Set(["@type"]));
    return { type_url: url, value: encodeChecked(this, path, type, inner) };
  }

  fields(
    path: string,
    type: protobuf.Type,
    value: Record<string, unknown>,
    skip: ReadonlySet<string>,
  ): Record<string, unknown> {
    const converted: Record<string, unknown> = {};
    const oneofsUsed = new Map<string, string>();
    for (const [key, fieldValue] of Object.entries(value)) {
      if (skip.has(key)) continue;
      const here = path === "" ? key : `${path}.${key}`;
      const field = type.fields[key];
      if (field === undefined) {
        this.fail(here, `no field '${key}' in ${typeName(type)}`);
        continue;
      }
      if (field.options?.["deprecated"] === true) this.fail(here, `field '${key}' of ${typeName(type)} is deprecated`);
      const oneof = field.partOf;
      if (oneof !== null) {
        const other = oneofsUsed.get(oneof.name);
        if (other !== undefined) this.fail(here, `'${key}' and '${other}' are both set in oneof ${oneof.name}`);
        oneofsUsed.set(oneof.name, key);
      }
      converted[key] = this.field(here, field, fieldValue);
    }
    return converted;
  }

  field(path: string, field: protobuf.Field, value: unknown): unknown {
    if (field instanceof protobuf.MapField) {
      if (!isObject(value)) {
        this.fail(path, "expected a map (JSON object)");
        return {};
      }
      return Object.fromEntries(
        Object.entries(value).map(([k, v]) => [k, this.single(`${path}[${JSON.stringify(k)}]`, field, v)]),
      );
    }
    if (field.repeated) {
      if (!Array.isArray(value)) {
        this.fail(path, "expected a list");
        return [];
      }
      return value.map((v: unknown, i) => this.single(`${path}[${i}]`, field, v));
    }
    return this.single(path, field, value);
  }

  single(path: string, field: protobuf.Field, value: unknown): unknown {
    const resolved = field.resolvedType;
    if (resolved instanceof protobuf.Type) {
      return this.message(path, resolved, value);
    } else if (resolved instanceof protobuf.Enum) {
      const names = Object.keys(resolved.values);
      const ok =
        typeof value === "string" ? names.includes(value) : Object.values(resolved.values).includes(value as number);
      if (!ok) this.fail(path, `${JSON.stringify(value)} is not one of ${resolved.name}: ${names.join(", ")}`);
      const option = typeof value === "string" ? resolved.valuesOptions?.[value] : undefined;
      if (option?.["deprecated"] === true) this.fail(path, `enum value ${String(value)} is deprecated`);
    } else {
      this.scalar(path, field.type, value);
    }
    return value;
  }
}

function toValue(value: unknown): Record<string, unknown> {
  if (value === null) return { nullValue: 0 };
  if (typeof value === "number") return { numberValue: value };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  return { structValue: toStruct(value) };
}

function toStruct(value: unknown): Record<string, unknown> {
  return { fields: isObject(value) ? Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toValue(v)])) : {} };
}

/** Encodes a converted message (an Any's payload), recording protobufjs' own complaints. */
function encodeChecked(walker: Walker, path: string, type: protobuf.Type, object: Record<string, unknown>): Uint8Array {
  try {
    const message = type.fromObject(object);
    const problem = type.verify(message);
    if (problem !== null) walker.fail(path, `protobufjs: ${problem}`);
    return type.encode(message).finish();
  } catch (error) {
    walker.fail(path, `protobufjs: ${(error as Error).message}`);
    return new Uint8Array();
  }
}

export interface ProtoCheck {
  /** Every problem found, as `path: message`; empty means valid. */
  readonly errors: readonly string[];
  /** Message types the walker descended into (shows that typed configs were really checked). */
  readonly typesSeen: ReadonlySet<string>;
  /** protobufjs' own verdict on the message built from the JSON (types and enums of known fields). */
  readonly verify: string | null;
}

export function checkAgainstProto(json: unknown, messageType = "envoy.config.bootstrap.v3.Bootstrap"): ProtoCheck {
  const root = envoyProtoRoot();
  const type = root.lookupType(messageType);
  const walker = new Walker(root);
  const converted = walker.message("", type, json);
  let verify: string | null;
  try {
    // The same content in binary form, typed configs packed into their Any: it must encode and decode.
    const message = type.fromObject(converted as Record<string, unknown>);
    verify = type.verify(message);
    type.decode(type.encode(message).finish());
  } catch (error) {
    verify = (error as Error).message;
  }
  return { errors: walker.errors, typesSeen: walker.typesSeen, verify };
}

let cachedV2: protobuf.Root | undefined;

/**
 * Envoy's v2 Bootstrap (Istio 0.8's), from the subset in proto/envoy-v2/ (no installed package carries Envoy's v2
 * protos; the subset restates their names, numbers and types, see proto/envoy-v2/core.proto). The same walker
 * checks it: every key a field of that message, every value of its type, one member per oneof.
 */
export function envoyV2ProtoRoot(): protobuf.Root {
  if (cachedV2 === undefined) {
    cachedV2 = protoUtil.loadProtosWithOptionsSync(["envoy-v2/bootstrap.proto"], {
      keepCase: true,
      includeDirs: [fileURLToPath(new URL("proto", repo))],
    });
    cachedV2.resolveAll();
  }
  return cachedV2;
}

export function checkAgainstV2Proto(json: unknown): ProtoCheck {
  const root = envoyV2ProtoRoot();
  const type = root.lookupType("envoy.config.bootstrap.v2.Bootstrap");
  const walker = new Walker(root);
  const converted = walker.message("", type, json);
  let verify: string | null;
  try {
    const message = type.fromObject(converted as Record<string, unknown>);
    verify = type.verify(message);
    type.decode(type.encode(message).finish());
  } catch (error) {
    verify = (error as Error).message;
  }
  return { errors: walker.errors, typesSeen: walker.typesSeen, verify };
}
