import { isIP } from "node:net";

/** Thrown by a value type's `parse` with a message that completes "NAME: …". */
export class ValueError extends Error {}

export interface ValueType<T> {
  /** Shown in `istio-vm config --help`-style listings, e.g. "port list or *". */
  readonly label: string;
  parse(raw: string): T;
  render(value: T): string;
}

export const text: ValueType<string> = { label: "text", parse: (raw) => raw, render: (v) => v };

export function integer(min: number, max: number): ValueType<number> {
  return {
    label: `integer ${min}–${max}`,
    parse(raw) {
      const trimmed = raw.trim();
      if (!/^-?\d+$/.test(trimmed)) throw new ValueError(`'${raw}' is not a whole number`);
      const n = Number(trimmed);
      if (n < min || n > max) throw new ValueError(`${n} is out of range (${min}–${max})`);
      return n;
    },
    render: (v) => String(v),
  };
}

function parsePort(raw: string): number {
  const trimmed = raw.trim();
  if (!/^\d+$/.test(trimmed)) throw new ValueError(`'${raw}' is not a port number`);
  const n = Number(trimmed);
  if (n < 1 || n > 65535) throw new ValueError(`port ${trimmed} is out of range (1–65535)`);
  return n;
}

export const port: ValueType<number> = { label: "port", parse: parsePort, render: (v) => String(v) };

function splitList(raw: string): string[] {
  return raw
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

/** Parses each item, collecting every bad item into one message. */
function parseItems<T>(raw: string, parseItem: (item: string) => T): T[] {
  const values: T[] = [];
  const errors: string[] = [];
  for (const item of splitList(raw)) {
    try {
      values.push(parseItem(item));
    } catch (error) {
      if (!(error instanceof ValueError)) throw error;
      errors.push(error.message);
    }
  }
  if (errors.length > 0) throw new ValueError(errors.join("; "));
  return values;
}

export const portList: ValueType<number[]> = {
  label: "comma-separated ports",
  parse: (raw) => [...new Set(parseItems(raw, parsePort))],
  render: (v) => v.join(","),
};

export type PortsOrAll = "*" | number[];
export const portsOrAll: ValueType<PortsOrAll> = {
  label: "comma-separated ports, or *",
  parse: (raw) => (raw.trim() === "*" ? "*" : portList.parse(raw)),
  render: (v) => (v === "*" ? "*" : v.join(",")),
};

export interface Cidr {
  readonly family: 4 | 6;
  readonly address: string;
  readonly prefix: number;
}

function ipv4ToBigInt(address: string): bigint {
  return address.split(".").reduce((acc, octet) => (acc << 8n) | BigInt(Number(octet)), 0n);
}

function ipv6ToBigInt(address: string): bigint {
  let parts = address.toLowerCase();
  // An embedded IPv4 tail (::ffff:10.0.0.1) becomes two hextets.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(parts);
  if (v4?.[1] !== undefined) {
    const n = ipv4ToBigInt(v4[1]);
    parts = `${parts.slice(0, -v4[1].length)}${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
  }
  const [head = "", tail] = parts.split("::");
  const headGroups = head === "" ? [] : head.split(":");
  const tailGroups = tail === undefined || tail === "" ? [] : tail.split(":");
  const fill = tail === undefined ? 0 : 8 - headGroups.length - tailGroups.length;
  const groups = [...headGroups, ...Array<string>(fill).fill("0"), ...tailGroups];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

export function parseCidr(item: string): Cidr {
  const [address = "", prefixText, ...rest] = item.split("/");
  const family = isIP(address);
  if (family === 0 || rest.length > 0) throw new ValueError(`'${item}' is not a CIDR (expected e.g. 10.96.0.0/12)`);
  const max = family === 4 ? 32 : 128;
  let prefix = max;
  if (prefixText !== undefined) {
    if (!/^\d+$/.test(prefixText) || Number(prefixText) > max) {
      throw new ValueError(`'${item}' has an invalid prefix length (0–${max})`);
    }
    prefix = Number(prefixText);
  }
  const value = family === 4 ? ipv4ToBigInt(address) : ipv6ToBigInt(address);
  const hostBits = BigInt(max - prefix);
  if ((value & ((1n << hostBits) - 1n)) !== 0n) {
    throw new ValueError(`'${item}' has host bits set after /${prefix}; use the network address`);
  }
  return { family: family === 4 ? 4 : 6, address, prefix };
}

export function renderCidr(cidr: Cidr): string {
  return `${cidr.address}/${cidr.prefix}`;
}

export const cidrList: ValueType<Cidr[]> = {
  label: "comma-separated CIDRs",
  parse: (raw) => parseItems(raw, parseCidr),
  render: (v) => v.map(renderCidr).join(","),
};

export type CidrsOrAll = "*" | Cidr[];
export const cidrsOrAll: ValueType<CidrsOrAll> = {
  label: "comma-separated CIDRs, or *",
  parse: (raw) => (raw.trim() === "*" ? "*" : cidrList.parse(raw)),
  render: (v) => (v === "*" ? "*" : cidrList.render(v)),
};

export const boolean: ValueType<boolean> = {
  label: "true or false",
  parse(raw) {
    const v = raw.trim().toLowerCase();
    if (["true", "1", "yes", "on"].includes(v)) return true;
    if (["false", "0", "no", "off", ""].includes(v)) return false;
    throw new ValueError(`'${raw}' is not true or false`);
  },
  render: (v) => String(v),
};

export function oneOf<const T extends string>(values: readonly T[]): ValueType<T> {
  return {
    label: values.join(" | "),
    parse(raw) {
      const v = raw.trim();
      const match = values.find((candidate) => candidate.toLowerCase() === v.toLowerCase());
      if (match === undefined) throw new ValueError(`'${raw}' is not one of ${values.join(", ")}`);
      return match;
    },
    render: (v) => v,
  };
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Go-style durations (`24h`, `1m30s`, `500ms`), as Istio's variables use; the value is in milliseconds. */
export const duration: ValueType<number> = {
  label: "duration (e.g. 24h, 90s, 500ms)",
  parse(raw) {
    const v = raw.trim();
    if (v === "0") return 0;
    const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
    let total = 0;
    let matched = 0;
    let m: RegExpExecArray | null;
    while ((m = re.exec(v)) !== null) {
      total += Number(m[1]) * (DURATION_UNITS[m[2] ?? ""] ?? 0);
      matched = re.lastIndex;
    }
    if (v === "" || matched !== v.length) throw new ValueError(`'${raw}' is not a duration (e.g. 24h, 90s, 500ms)`);
    return Math.round(total);
  },
  render(ms) {
    if (ms === 0) return "0";
    const parts: string[] = [];
    let rest = ms;
    for (const [unit, size] of [
      ["h", 3_600_000],
      ["m", 60_000],
      ["s", 1000],
      ["ms", 1],
    ] as const) {
      const n = Math.floor(rest / size);
      if (n > 0) parts.push(`${n}${unit}`);
      rest -= n * size;
    }
    return parts.join("");
  },
};

export const ratio: ValueType<number> = {
  label: "number 0–1",
  parse(raw) {
    const v = raw.trim();
    if (!/^\d*\.?\d+$/.test(v)) throw new ValueError(`'${raw}' is not a number`);
    const n = Number(v);
    if (n < 0 || n > 1) throw new ValueError(`${n} is out of range (0–1)`);
    return n;
  },
  render: (v) => String(v),
};

/** Empty means "not set". */
export const optionalIp: ValueType<string> = {
  label: "IPv4 or IPv6 address",
  parse(raw) {
    const v = raw.trim();
    if (v !== "" && isIP(v) === 0) throw new ValueError(`'${raw}' is not an IP address`);
    return v;
  },
  render: (v) => v,
};

/** `host:port` or `[v6]:port`. */
export interface HostPort {
  readonly host: string;
  readonly port: number;
}
export const hostPort: ValueType<HostPort> = {
  label: "host:port",
  parse(raw) {
    const v = raw.trim();
    const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d+)$/.exec(v);
    const host = m?.[1] ?? m?.[2];
    if (m === null || host === undefined || host === "") throw new ValueError(`'${raw}' is not host:port`);
    return { host, port: parsePort(m[3] ?? "") };
  },
  render: (v) => (v.host.includes(":") ? `[${v.host}]:${v.port}` : `${v.host}:${v.port}`),
};

export const absolutePath: ValueType<string> = {
  label: "absolute path",
  parse(raw) {
    if (!raw.startsWith("/")) throw new ValueError(`'${raw}' is not an absolute path`);
    return raw;
  },
  render: (v) => v,
};

/** An absolute path, or empty for "not set". */
export const optionalPath: ValueType<string> = {
  label: "absolute path or empty",
  parse: (raw) => (raw === "" ? "" : absolutePath.parse(raw)),
  render: (v) => v,
};

/** Kubernetes object and namespace names (RFC 1123 labels). */
export const dnsLabel: ValueType<string> = {
  label: "DNS label",
  parse(raw) {
    const v = raw.trim();
    if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(v)) {
      throw new ValueError(`'${raw}' is not a valid name (lower-case letters, digits and '-', at most 63)`);
    }
    return v;
  },
  render: (v) => v,
};

export const dnsName: ValueType<string> = {
  label: "DNS name",
  parse(raw) {
    const v = raw.trim();
    if (
      v.length > 253 ||
      !/^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$/.test(v)
    ) {
      throw new ValueError(`'${raw}' is not a DNS name`);
    }
    return v;
  },
  render: (v) => v,
};

export const jsonObject: ValueType<Record<string, unknown>> = {
  label: "JSON object",
  parse(raw) {
    if (raw.trim() === "") return {};
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch (error) {
      throw new ValueError(`not valid JSON (${(error as Error).message})`);
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new ValueError("must be a JSON object");
    }
    return parsed as Record<string, unknown>;
  },
  render: (v) => (Object.keys(v).length === 0 ? "" : JSON.stringify(v)),
};

export const userName: ValueType<string> = {
  label: "user name",
  parse(raw) {
    const v = raw.trim();
    if (!/^[a-z_][a-z0-9_-]*\$?$/i.test(v)) throw new ValueError(`'${raw}' is not a user name`);
    return v;
  },
  render: (v) => v,
};

/** Numeric ids as a comma list; empty means "look up the user". */
export const idList: ValueType<number[]> = {
  label: "comma-separated numeric ids",
  parse: (raw) =>
    parseItems(raw, (item) => {
      if (!/^\d+$/.test(item)) throw new ValueError(`'${item}' is not a numeric id`);
      return Number(item);
    }),
  render: (v) => v.join(","),
};

/** A comma list drawn from a fixed set; order and duplicates do not matter. */
export function subsetOf<const T extends string>(values: readonly T[]): ValueType<T[]> {
  return {
    label: `comma-separated subset of ${values.join(", ")}`,
    parse: (raw) => {
      const chosen = parseItems(raw, (item) => {
        const match = values.find((v) => v === item.toLowerCase());
        if (match === undefined) throw new ValueError(`'${item}' is not one of ${values.join(", ")}`);
        return match;
      });
      return values.filter((v) => chosen.includes(v));
    },
    render: (v) => v.join(","),
  };
}

export const logLevel = oneOf(["error", "warn", "info", "debug"] as const);
