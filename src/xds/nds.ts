/**
 * NDS, the DNS name table istiod sends to agents over ADS: one `istio.networking.nds.v1.NameTable` resource
 * (istio/istio `pkg/dns/proto/nds.proto`). The message is small and stable, so it is declared here rather than in
 * the generated Envoy descriptor. The agent asks for it by type URL with no resource names.
 */
import protobuf from "protobufjs";
import type { AnyResource } from "./protos.js";

export const NAME_TABLE_TYPE_URL = "type.googleapis.com/istio.networking.nds.v1.NameTable";

/** nds.proto's NameInfo with camelCase names (`alt_hosts` → `altHosts`). */
export interface NdsNameInfo {
  readonly ips: readonly string[];
  readonly registry?: string;
  readonly shortname?: string;
  readonly namespace?: string;
  readonly altHosts?: readonly string[];
}

export type NdsNameTable = Readonly<Record<string, NdsNameInfo>>;

const nameInfoFields = {
  ips: { rule: "repeated", type: "string", id: 1 },
  registry: { type: "string", id: 2 },
  shortname: { type: "string", id: 3 },
  namespace: { type: "string", id: 4 },
  alt_hosts: { rule: "repeated", type: "string", id: 5 },
};

// IField has no keyType, though fromJSON reads map fields from it (protobufjs' IMapField).
const definition: unknown = {
  nested: {
    istio: {
      nested: {
        networking: {
          nested: {
            nds: {
              nested: {
                v1: {
                  nested: {
                    NameTable: {
                      fields: {
                        table: { keyType: "string", type: "NameInfo", id: 1 },
                        name_info: { type: "NameInfo", id: 2 },
                      },
                      nested: { NameInfo: { fields: nameInfoFields } },
                    },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
};
const root = protobuf.Root.fromJSON(definition as protobuf.INamespace);
const NameTableType = root.lookupType("istio.networking.nds.v1.NameTable");

interface WireNameInfo {
  ips?: string[];
  registry?: string;
  shortname?: string;
  namespace?: string;
  alt_hosts?: string[];
}

export function encodeNameTable(table: NdsNameTable): Buffer {
  const wire: Record<string, WireNameInfo> = {};
  for (const [host, info] of Object.entries(table)) {
    wire[host] = {
      ips: [...info.ips],
      ...(info.registry === undefined ? {} : { registry: info.registry }),
      ...(info.shortname === undefined ? {} : { shortname: info.shortname }),
      ...(info.namespace === undefined ? {} : { namespace: info.namespace }),
      ...(info.altHosts === undefined ? {} : { alt_hosts: [...info.altHosts] }),
    };
  }
  return Buffer.from(NameTableType.encode(NameTableType.fromObject({ table: wire })).finish());
}

/** Decodes a NameTable; empty strings (proto3 defaults) are left out. Throws on bytes that are not one. */
export function decodeNameTable(bytes: Uint8Array): NdsNameTable {
  const plain = NameTableType.toObject(NameTableType.decode(bytes), {
    defaults: false,
    arrays: true,
    objects: true,
  }) as {
    table?: Record<string, WireNameInfo>;
  };
  const out: Record<string, NdsNameInfo> = {};
  for (const [host, info] of Object.entries(plain.table ?? {})) {
    out[host] = {
      ips: info.ips ?? [],
      ...(info.registry ? { registry: info.registry } : {}),
      ...(info.shortname ? { shortname: info.shortname } : {}),
      ...(info.namespace ? { namespace: info.namespace } : {}),
      ...(info.alt_hosts !== undefined && info.alt_hosts.length > 0 ? { altHosts: info.alt_hosts } : {}),
    };
  }
  return out;
}

export function packNameTable(table: NdsNameTable): AnyResource {
  return { type_url: NAME_TABLE_TYPE_URL, value: encodeNameTable(table) };
}
