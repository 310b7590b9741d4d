/**
 * ClusterIP allocation from the service CIDR(s) (IPv4 and/or IPv6), as kube-apiserver's allocator does: an explicit
 * address must lie inside a range and be free; otherwise the next free address is taken. The network address and,
 * for IPv4, the broadcast address are never handed out.
 */
import { isIP } from "node:net";

export interface Cidr {
  readonly family: 4 | 6;
  readonly base: bigint;
  readonly prefix: number;
  readonly text: string;
}

/**
 * `isIP`, less zone ids: Node accepts `fe80::1%eth0`, but a zone names an interface of one host and is no part of a
 * cluster IP or a CIDR (kube-apiserver refuses it too); left in, it reached `BigInt(NaN)`.
 */
function ipFamily(ip: string): 0 | 4 | 6 {
  return ip.includes("%") ? 0 : (isIP(ip) as 0 | 4 | 6);
}

export function ipToBigInt(ip: string): bigint {
  const family = ipFamily(ip);
  if (family === 4) return ip.split(".").reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n);
  if (family !== 6) throw new Error(`not an IP address: ${ip}`);
  let text = ip;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4?.[1] !== undefined) {
    const n = ipToBigInt(v4[1]);
    text = text.slice(0, -v4[1].length) + `${(n >> 16n).toString(16)}:${(n & 0xffffn).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const headParts = head === "" ? [] : head.split(":");
  const tailParts = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups =
    tail === undefined
      ? headParts
      : [...headParts, ...Array<string>(8 - headParts.length - tailParts.length).fill("0"), ...tailParts];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16)), 0n);
}

export function bigIntToIp(value: bigint, family: 4 | 6): string {
  if (family === 4) return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join(".");
  const groups: string[] = [];
  for (let i = 7n; i >= 0n; i--) groups.push(((value >> (i * 16n)) & 0xffffn).toString(16));
  // Compress the longest run of zero groups (RFC 5952).
  let best = { start: -1, length: 0 };
  for (let i = 0; i < 8;) {
    if (groups[i] !== "0") {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > best.length && j - i > 1) best = { start: i, length: j - i };
    i = j;
  }
  if (best.start < 0) return groups.join(":");
  return `${groups.slice(0, best.start).join(":")}::${groups.slice(best.start + best.length).join(":")}`;
}

export function parseCidr(text: string): Cidr {
  const [ip = "", prefixText] = text.trim().split("/");
  const family = ipFamily(ip);
  const prefix = Number(prefixText);
  const max = family === 4 ? 32 : 128;
  if (
    (family !== 4 && family !== 6) ||
    prefixText === undefined ||
    !Number.isInteger(prefix) ||
    prefix < 1 ||
    prefix > max
  ) {
    throw new Error(`"${text}" is not a CIDR such as 10.96.0.0/12 or fd00:10:96::/112`);
  }
  const bits = BigInt(max - prefix);
  const base = (ipToBigInt(ip) >> bits) << bits;
  return { family, base, prefix, text: `${bigIntToIp(base, family)}/${prefix}` };
}

export function cidrContains(cidr: Cidr, ip: string): boolean {
  const family = ipFamily(ip);
  if (family !== cidr.family) return false;
  const bits = BigInt((family === 4 ? 32 : 128) - cidr.prefix);
  return ipToBigInt(ip) >> bits === cidr.base >> bits;
}

function size(cidr: Cidr): bigint {
  return 1n << BigInt((cidr.family === 4 ? 32 : 128) - cidr.prefix);
}

export type ReserveResult = "ok" | "out-of-range" | "allocated" | "family-not-configured";

export class ClusterIpAllocator {
  readonly cidrs: readonly Cidr[];
  readonly #used = new Set<string>();
  readonly #next = new Map<Cidr, bigint>();

  constructor(cidrs: readonly Cidr[]) {
    this.cidrs = cidrs;
  }

  /** The ranges as the API server's message prints them ("10.96.0.0/12" or "10.96.0.0/12,fd00::/108"). */
  get rangeText(): string {
    return this.cidrs.map((c) => c.text).join(",");
  }

  has(ip: string): boolean {
    return this.#used.has(ipKey(ip));
  }

  reserve(ip: string): ReserveResult {
    const family = ipFamily(ip);
    if (!this.cidrs.some((c) => c.family === family)) return "family-not-configured";
    const cidr = this.cidrs.find((c) => cidrContains(c, ip));
    if (cidr === undefined) return "out-of-range";
    const value = ipToBigInt(ip);
    if (value === cidr.base || (cidr.family === 4 && value === cidr.base + size(cidr) - 1n)) return "out-of-range";
    const key = ipKey(ip);
    if (this.#used.has(key)) return "allocated";
    this.#used.add(key);
    return "ok";
  }

  /** Marks an address used without checks (objects already in the store). */
  mark(ip: string): void {
    if (ipFamily(ip) !== 0) this.#used.add(ipKey(ip));
  }

  release(ip: string): void {
    if (ipFamily(ip) !== 0) this.#used.delete(ipKey(ip));
  }

  /** The next free address of the family (IPv4 by default when configured), or undefined when the range is full. */
  allocate(family?: 4 | 6): string | undefined {
    const cidr = this.cidrs.find((c) => family === undefined || c.family === family);
    if (cidr === undefined) return undefined;
    const total = size(cidr);
    // Dynamic allocations start above the low band that static addresses (the kubernetes service's .1, kube-dns's .10)
    // use, as kube-apiserver prefers the upper range for dynamic IPs.
    const low = total > 64n ? 16n : 1n;
    const last = cidr.family === 4 ? total - 2n : total - 1n;
    let offset = this.#next.get(cidr) ?? low;
    for (let tries = 0n; tries <= last - low; tries++) {
      if (offset > last) offset = low;
      const ip = bigIntToIp(cidr.base + offset, cidr.family);
      offset++;
      if (!this.#used.has(ipKey(ip))) {
        this.#used.add(ipKey(ip));
        this.#next.set(cidr, offset);
        return ip;
      }
    }
    return undefined;
  }
}

function ipKey(ip: string): string {
  const family = ipFamily(ip);
  return family === 6 ? bigIntToIp(ipToBigInt(ip), 6) : ip;
}
