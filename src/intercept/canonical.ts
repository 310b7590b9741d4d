/**
 * Addresses and CIDRs as `iptables-save` prints them, so that a planned rule and a saved one compare as text: IPv4
 * without leading zeros, IPv6 in the RFC 5952 form glibc's `inet_ntop` writes (IPv4-compatible and -mapped
 * addresses end in dotted IPv4).
 */
import type { Cidr } from "../config/types.js";

function ipv4Canonical(address: string): string {
  return address
    .split(".")
    .map((o) => String(Number(o)))
    .join(".");
}

function ipv6Canonical(address: string): string {
  let text = address.toLowerCase();
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4?.[1] !== undefined) {
    const octets = v4[1].split(".").map(Number);
    const hi = (((octets[0] ?? 0) << 8) | (octets[1] ?? 0)).toString(16);
    const lo = (((octets[2] ?? 0) << 8) | (octets[3] ?? 0)).toString(16);
    text = `${text.slice(0, -v4[1].length)}${hi}:${lo}`;
  }
  const [head = "", tail] = text.split("::");
  const headGroups = head === "" ? [] : head.split(":");
  const tailGroups = tail === undefined || tail === "" ? [] : tail.split(":");
  const fill = tail === undefined ? 0 : 8 - headGroups.length - tailGroups.length;
  const groups = [...headGroups, ...Array<string>(fill).fill("0"), ...tailGroups].map((g) => parseInt(g, 16));
  // RFC 5952: compress the longest run (≥ 2) of zero groups, the first one on a tie.
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < groups.length;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < groups.length && groups[j] === 0) j++;
    if (j - i > bestLength && j - i >= 2) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  // Like glibc's inet_ntop (so like iptables-save): an IPv4-compatible or -mapped address ends in dotted IPv4.
  if (bestStart === 0 && (bestLength === 6 || (bestLength === 5 && groups[5] === 0xffff))) {
    const [hi = 0, lo = 0] = groups.slice(6);
    const v4 = [hi >> 8, hi & 0xff, lo >> 8, lo & 0xff].join(".");
    return bestLength === 6 ? `::${v4}` : `::ffff:${v4}`;
  }
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}

/** A CIDR as iptables-save prints it (`10.23.0.0/16`, `fd00::/64`). */
export function canonicalCidr(cidr: Cidr): string {
  const address = cidr.family === 4 ? ipv4Canonical(cidr.address) : ipv6Canonical(cidr.address);
  return `${address}/${cidr.prefix}`;
}
