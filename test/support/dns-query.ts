/** One DNS question over UDP, for tests of the agent's DNS proxy. */
import { createSocket } from "node:dgram";
import * as dnsPacket from "dns-packet";
import type { Packet } from "dns-packet";

/** Asks `host:port` for the A records of `name` (recursion desired) and returns the answer packet. */
export function askA(port: number, name: string, host = "127.0.0.1"): Promise<Packet> {
  return new Promise((resolve, reject) => {
    const socket = createSocket(host.includes(":") ? "udp6" : "udp4");
    socket.on("error", reject);
    socket.on("message", (message) => {
      socket.close();
      resolve(dnsPacket.decode(message));
    });
    socket.send(
      dnsPacket.encode({ type: "query", id: 9, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: "A", name }] }),
      port,
      host,
    );
  });
}

/** The answers as sorted `TYPE data` lines. */
export function answerLines(packet: Packet): string[] {
  return (packet.answers ?? []).map((a) => `${a.type} ${String((a as { data: unknown }).data)}`).sort();
}
