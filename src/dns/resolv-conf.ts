/**
 * The parts of resolv.conf(5) the DNS proxy uses: the nameservers it forwards to and the search list. As glibc: a
 * file without a usable nameserver means the local server (127.0.0.1), `domain` and `search` replace each other
 * (the last one wins), comments start with `#` or `;`. Unlike glibc, every nameserver is kept, not only the first
 * three: the proxy queries them all in parallel.
 */
import { isIP } from "node:net";

export interface ResolvConf {
  /** `ip:53` or `[ip]:53`, in file order, without duplicates. */
  readonly servers: readonly string[];
  /** The nameserver addresses alone (for the DNS capture rules). */
  readonly addresses: readonly string[];
  readonly search: readonly string[];
}

export const DNS_PORT = 53;

export function serverAddress(ip: string, port = DNS_PORT): string {
  return isIP(ip) === 6 ? `[${ip}]:${String(port)}` : `${ip}:${String(port)}`;
}

/** Splits `ip:port` / `[ip]:port` as produced by `serverAddress`. */
export function splitServer(server: string): { readonly host: string; readonly port: number } {
  const bracketed = /^\[(.+)\]:(\d+)$/.exec(server);
  if (bracketed !== null) return { host: bracketed[1] ?? "", port: Number(bracketed[2]) };
  const index = server.lastIndexOf(":");
  return { host: server.slice(0, index), port: Number(server.slice(index + 1)) };
}

export function parseResolvConf(text: string): ResolvConf {
  const addresses: string[] = [];
  let search: string[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/[#;].*$/, "").trim();
    const [keyword, ...args] = line.split(/\s+/);
    if (keyword === "nameserver" && args[0] !== undefined) {
      // A link-local IPv6 server may carry a zone (fe80::1%eth0); node's sockets accept it.
      const ip = args[0];
      if (isIP(ip.replace(/%.*$/, "")) !== 0 && !addresses.includes(ip)) addresses.push(ip);
    } else if (keyword === "search") {
      search = args.filter((d) => d !== "" && d !== ".");
    } else if (keyword === "domain" && args[0] !== undefined) {
      search = [args[0]];
    }
  }
  const servers = addresses.length > 0 ? addresses : ["127.0.0.1"];
  return {
    servers: servers.map((ip) => serverAddress(ip)),
    addresses,
    search: search.map((d) => d.replace(/\.$/, "").toLowerCase()),
  };
}
