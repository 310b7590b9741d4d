import { isIP } from "node:net";
import { printable, quoted } from "./printable.js";

/** Thrown by a value type's `parse` with a message that completes "NAME: …". */
export class ValueError extends Error {}

export interface ValueType<T> {
  /** Shown in `istio-vm config --help`-style listings, e.g. "port list or *". */
  readonly label: string;
  parse(raw: string): T;
  render(value: T): string;
}

export const text: ValueType<string> = { label: "text", parse: (raw) => raw, render: (v) => v };

/**
 * Spaces and tabs around a value, and around each item of a list, are ignored (`3306, 8080` is two ports); nothing
 * else is: any other character that a type does not expect, including other white space, is an error.
 */
export function trimBlanks(raw: string): string {
  let start = 0;
  let end = raw.length;
  while (start < end && (raw[start] === " " || raw[start] === "\t")) start++;
  while (end > start && (raw[end - 1] === " " || raw[end - 1] === "\t")) end--;
  return raw.slice(start, end);
}

/**
 * Numbers are plain decimals without leading zeros: `010` is 8 to inet_aton(3) (each part of an address may be octal)
 * and to iptables, whose port and number parser autodetects the base (netfilter iptables, libxtables/xtables.c,
 * `xtables_strtoul`: "Base is always 0"). A leading zero is refused rather than read one way or the other.
 */
function hasLeadingZero(digits: string): boolean {
  return digits.length > 1 && digits.startsWith("0");
}

export function integer(min: number, max: number): ValueType<number> {
  return {
    label: `integer ${min}–${max}`,
    parse(raw) {
      const trimmed = trimBlanks(raw);
      if (!/^-?\d+$/.test(trimmed)) throw new ValueError(`${quoted(raw)} is not a whole number`);
      const digits = trimmed.replace(/^-/, "");
      if (hasLeadingZero(digits)) {
        throw new ValueError(`${quoted(trimmed)} has a leading zero; write ${trimmed.replace(/^(-?)0+(?=\d)/, "$1")}`);
      }
      const n = Number(trimmed);
      if (n < min || n > max) throw new ValueError(`${printable(trimmed, 40)} is out of range (${min}–${max})`);
      return n;
    },
    render: (v) => String(v),
  };
}

function parsePort(raw: string): number {
  const trimmed = trimBlanks(raw);
  if (!/^\d+$/.test(trimmed)) throw new ValueError(`${quoted(raw)} is not a port number`);
  if (hasLeadingZero(trimmed)) {
    throw new ValueError(`port ${quoted(trimmed)} has a leading zero; write ${trimmed.replace(/^0+(?=\d)/, "")}`);
  }
  const n = Number(trimmed);
  if (n < 1 || n > 65535) throw new ValueError(`port ${printable(trimmed, 40)} is out of range (1–65535)`);
  return n;
}

export const port: ValueType<number> = { label: "port", parse: parsePort, render: (v) => String(v) };

/**
 * A comma list: blank (or only spaces) is the empty list; items are trimmed of spaces and tabs (see `trimBlanks`); an
 * empty item (`80,,443`, a leading or trailing comma) is an error, since it is nearly always a value left out.
 */
function parseItems<T>(raw: string, parseItem: (item: string) => T): T[] {
  if (trimBlanks(raw) === "") return [];
  const values: T[] = [];
  const errors: string[] = [];
  let empty = 0;
  for (const item of raw.split(",").map(trimBlanks)) {
    if (item === "") {
      empty++;
      continue;
    }
    try {
      values.push(parseItem(item));
    } catch (error) {
      if (!(error instanceof ValueError)) throw error;
      errors.push(error.message);
    }
  }
  if (empty > 0) {
    errors.unshift(
      `${quoted(raw)} has ${empty === 1 ? "an empty item" : `${empty} empty items`} ` +
        "(two commas in a row, or a comma at the start or end); remove the extra comma",
    );
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
  parse: (raw) => (trimBlanks(raw) === "*" ? "*" : portList.parse(raw)),
  render: (v) => (v === "*" ? "*" : v.join(",")),
};

export interface Cidr {
  readonly family: 4 | 6;
  readonly address: string;
  readonly prefix: number;
}

/** An IP address as a number, or why the text is not one. */
type ParsedAddress = { readonly family: 4 | 6; readonly value: bigint } | { readonly reason: string };

function parseIpv4(text: string): ParsedAddress {
  const octets = text.split(".");
  let value = 0n;
  for (const octet of octets) {
    if (hasLeadingZero(octet)) {
      return {
        reason: `octet '${octet}' has a leading zero (inet_aton would read it as octal); write ${Number(octet)}`,
      };
    }
    const n = Number(octet);
    if (n > 255) return { reason: `octet ${octet} is out of range (0–255)` };
    value = (value << 8n) | BigInt(n);
  }
  return { family: 4, value };
}

/** Only called on text `isIP` accepts as IPv6 without a zone id; still checks each group so it cannot throw. */
function ipv6Value(text: string): bigint | undefined {
  let parts = text.toLowerCase();
  // An embedded IPv4 tail (::ffff:10.0.0.1) becomes two hextets.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(parts);
  if (v4?.[1] !== undefined) {
    const tail = parseIpv4(v4[1]);
    if (!("value" in tail)) return undefined;
    parts = `${parts.slice(0, -v4[1].length)}${(tail.value >> 16n).toString(16)}:${(tail.value & 0xffffn).toString(16)}`;
  }
  const [head = "", tail, ...more] = parts.split("::");
  if (more.length > 0) return undefined;
  const headGroups = head === "" ? [] : head.split(":");
  const tailGroups = tail === undefined || tail === "" ? [] : tail.split(":");
  const fill = tail === undefined ? 0 : 8 - headGroups.length - tailGroups.length;
  const groups = [...headGroups, ...Array<string>(Math.max(fill, 0)).fill("0"), ...tailGroups];
  if (groups.length !== 8 || !groups.every((g) => /^[0-9a-f]{1,4}$/.test(g))) return undefined;
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

/**
 * Strict IP address syntax: dotted-quad IPv4 without leading zeros, or IPv6 text (RFC 4291 section 2.2) without a
 * zone id. A zone id (`fe80::1%eth0`, RFC 4007 section 11) names an interface of one host; Node's `isIP` accepts it,
 * but it means nothing in a CIDR, in iptables or in a mesh address, so it is refused with that reason.
 */
function parseAddress(text: string): ParsedAddress {
  const zone = text.indexOf("%");
  if (zone >= 0 && text.includes(":")) {
    return {
      reason:
        `it has an IPv6 zone id (${printable(text.slice(zone), 20)}): a zone id names an interface of this host, ` +
        "not part of an address; remove it",
    };
  }
  if (/^\d+\.\d+\.\d+\.\d+$/.test(text)) return parseIpv4(text);
  if (text.includes(":") && isIP(text) === 6) {
    const value = ipv6Value(text);
    if (value !== undefined) return { family: 6, value };
  }
  return { reason: "" };
}

export function parseCidr(item: string): Cidr {
  const slash = item.indexOf("/");
  const address = slash < 0 ? item : item.slice(0, slash);
  const prefixText = slash < 0 ? undefined : item.slice(slash + 1);
  const parsed = parseAddress(address);
  if (!("value" in parsed)) {
    throw new ValueError(
      parsed.reason === ""
        ? `${quoted(item)} is not a CIDR (expected e.g. 10.96.0.0/12)`
        : `${quoted(item)} is not a CIDR: ${parsed.reason}`,
    );
  }
  const max = parsed.family === 4 ? 32 : 128;
  let prefix = max;
  if (prefixText !== undefined) {
    if (/^\d+$/.test(prefixText) && hasLeadingZero(prefixText)) {
      throw new ValueError(
        `${quoted(item)}: the prefix length '${prefixText}' has a leading zero; write /${Number(prefixText)}`,
      );
    }
    if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max) {
      throw new ValueError(`${quoted(item)} has an invalid prefix length (0–${max})`);
    }
    prefix = Number(prefixText);
  }
  const hostBits = BigInt(max - prefix);
  if ((parsed.value & ((1n << hostBits) - 1n)) !== 0n) {
    throw new ValueError(`${quoted(item)} has host bits set after /${prefix}; use the network address`);
  }
  return { family: parsed.family, address, prefix };
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
  parse: (raw) => (trimBlanks(raw) === "*" ? "*" : cidrList.parse(raw)),
  render: (v) => (v === "*" ? "*" : cidrList.render(v)),
};

export const boolean: ValueType<boolean> = {
  label: "true or false",
  parse(raw) {
    const v = trimBlanks(raw).toLowerCase();
    if (["true", "1", "yes", "on"].includes(v)) return true;
    if (["false", "0", "no", "off", ""].includes(v)) return false;
    throw new ValueError(`${quoted(raw)} is not true or false`);
  },
  render: (v) => String(v),
};

export function oneOf<const T extends string>(values: readonly T[]): ValueType<T> {
  return {
    label: values.join(" | "),
    parse(raw) {
      const v = trimBlanks(raw);
      const match = values.find((candidate) => candidate.toLowerCase() === v.toLowerCase());
      if (match === undefined) throw new ValueError(`${quoted(raw)} is not one of ${values.join(", ")}`);
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
    const v = trimBlanks(raw);
    if (v === "0") return 0;
    const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
    let total = 0;
    let matched = 0;
    let m: RegExpExecArray | null;
    while ((m = re.exec(v)) !== null) {
      total += Number(m[1]) * (DURATION_UNITS[m[2] ?? ""] ?? 0);
      matched = re.lastIndex;
    }
    if (v === "" || matched !== v.length)
      throw new ValueError(`${quoted(raw)} is not a duration (e.g. 24h, 90s, 500ms)`);
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
    const v = trimBlanks(raw);
    if (!/^\d*\.?\d+$/.test(v)) throw new ValueError(`${quoted(raw)} is not a number`);
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
    const v = trimBlanks(raw);
    if (v === "") return v;
    const parsed = parseAddress(v);
    if (!("value" in parsed)) {
      throw new ValueError(
        parsed.reason === ""
          ? `${quoted(raw)} is not an IP address`
          : `${quoted(raw)} is not an IP address: ${parsed.reason}`,
      );
    }
    return v;
  },
  render: (v) => v,
};

/** `host:port` or `[v6]:port`. */
export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** A host to dial: a DNS name (a final dot allowed), an IPv4 address, or (in brackets) an IPv6 address. */
function parseHost(host: string, bracketed: boolean): string | undefined {
  if (bracketed || /^[\d.]+$/.test(host)) {
    const parsed = parseAddress(host);
    if (!("value" in parsed)) return parsed.reason === "" ? "not an IP address" : parsed.reason;
    if (bracketed && parsed.family !== 6) return "only an IPv6 address goes in brackets";
    return undefined;
  }
  const name = host.endsWith(".") ? host.slice(0, -1) : host;
  return isDnsName(name) ? undefined : "not a host name or IP address";
}

export const hostPort: ValueType<HostPort> = {
  label: "host:port",
  parse(raw) {
    const v = trimBlanks(raw);
    const m = /^(?:\[([^\]]*)\]|([^:[\]]*)):([^:]*)$/.exec(v);
    const host = m?.[1] ?? m?.[2];
    if (m === null || host === undefined || host === "") {
      throw new ValueError(`${quoted(raw)} is not host:port (e.g. istiod.istio-system.svc:15012, [fd00::1]:15012)`);
    }
    const problem = parseHost(host, m[1] !== undefined);
    if (problem !== undefined) throw new ValueError(`${quoted(raw)}: host ${quoted(host)}: ${problem}`);
    return { host, port: parsePort(m[3] ?? "") };
  },
  render: (v) => (v.host.includes(":") ? `[${v.host}]:${v.port}` : `${v.host}:${v.port}`),
};

export const absolutePath: ValueType<string> = {
  label: "absolute path",
  parse(raw) {
    if (!raw.startsWith("/")) throw new ValueError(`${quoted(raw)} is not an absolute path`);
    // A control character in a path is a paste or line-end accident, never a file someone meant (and NUL cannot be
    // passed to the kernel at all).
    const control = /\p{Cc}/u.exec(raw);
    if (control !== null) {
      throw new ValueError(`${quoted(raw)} contains a control character (${printable(control[0])}); remove it`);
    }
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
    const v = trimBlanks(raw);
    if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(v)) {
      throw new ValueError(`${quoted(raw)} is not a valid name (lower-case letters, digits and '-', at most 63)`);
    }
    return v;
  },
  render: (v) => v,
};

function isDnsName(v: string): boolean {
  return (
    v.length <= 253 && /^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$/.test(v)
  );
}

export const dnsName: ValueType<string> = {
  label: "DNS name",
  parse(raw) {
    const v = trimBlanks(raw);
    if (!isDnsName(v)) throw new ValueError(`${quoted(raw)} is not a DNS name`);
    return v;
  },
  render: (v) => v,
};

export const jsonObject: ValueType<Record<string, unknown>> = {
  label: "JSON object",
  parse(raw) {
    if (trimBlanks(raw) === "") return {};
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch (error) {
      throw new ValueError(`not valid JSON (${printable((error as Error).message, 200)})`);
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
    const v = trimBlanks(raw);
    if (!/^[a-z_][a-z0-9_-]*\$?$/i.test(v)) throw new ValueError(`${quoted(raw)} is not a user name`);
    return v;
  },
  render: (v) => v,
};

/** Numeric ids as a comma list; empty means "look up the user". */
export const idList: ValueType<number[]> = {
  label: "comma-separated numeric ids",
  parse: (raw) =>
    parseItems(raw, (item) => {
      if (!/^\d+$/.test(item)) throw new ValueError(`${quoted(item)} is not a numeric id`);
      if (hasLeadingZero(item)) throw new ValueError(`id ${quoted(item)} has a leading zero; write ${Number(item)}`);
      // 2^32-1 is (uid_t)-1, "no id", to the kernel.
      if (Number(item) > 4_294_967_294)
        throw new ValueError(`id ${printable(item, 40)} is out of range (0–4294967294)`);
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
        if (match === undefined) throw new ValueError(`${quoted(item)} is not one of ${values.join(", ")}`);
        return match;
      });
      return values.filter((v) => chosen.includes(v));
    },
    render: (v) => v.join(","),
  };
}

export const logLevel = oneOf(["error", "warn", "info", "debug"] as const);
