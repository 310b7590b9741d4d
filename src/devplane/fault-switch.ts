/**
 * What the dev plane's fault-injection switches (the CA's gRPC SetFault, the Pilot's POST /istio-vm-dev/fault) share:
 * they answer local callers only — `istio-vm dev --listen 0.0.0.0` must not let the network break it — and read a
 * short body only, since a fault list is a few words.
 */
import { isIP } from "node:net";
import type { IncomingMessage } from "node:http";

/** The longest fault specification a switch reads (e.g. "registry-unavailable,stream-reset*3,delay:5000"). */
export const FAULT_SPEC_MAX_BYTES = 1024;

export const NOT_LOOPBACK_MESSAGE = "fault injection is allowed from loopback only";

/**
 * Whether a peer address is loopback: a socket's remoteAddress ("127.0.0.1", "::1", "::ffff:127.0.0.1") or a gRPC
 * peer ("127.0.0.1:5000", "[::1]:5000", "ipv4:127.0.0.1:5000").
 */
export function isLoopbackPeer(peer: string | undefined): boolean {
  if (peer === undefined) return false;
  let host = peer.replace(/^ipv[46]:/, "");
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(host);
  if (bracketed !== null) host = bracketed[1] ?? "";
  else if (isIP(host) === 0) host = host.replace(/:\d+$/, "");
  host = host.replace(/^::ffff:/i, "");
  if (isIP(host) === 4) return host.startsWith("127.");
  return isIP(host) === 6 && /^(0{0,4}:){2,7}0{0,3}1$|^::1$/.test(host);
}

/** The request's body as text, or undefined once it is longer than FAULT_SPEC_MAX_BYTES (the rest is not read). */
export function readFaultSpec(req: IncomingMessage): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > FAULT_SPEC_MAX_BYTES) {
        req.off("data", onData);
        req.pause();
        resolve(undefined);
        return;
      }
      chunks.push(chunk);
    };
    req.on("data", onData);
    req.on("end", () => {
      resolve(Buffer.concat(chunks).toString("utf8"));
    });
    req.on("error", reject);
  });
}
