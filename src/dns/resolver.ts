/**
 * The DNS proxy's decision for one query, pure: answer it from the lookup table, or forward it upstream unchanged.
 * Only a single A or AAAA question for a name the table holds is answered here (authoritative, NOERROR, the
 * addresses of the asked family, possibly none); everything else, and everything while no table is loaded yet, is
 * forwarded, so the proxy never fails a query the VM's own resolvers could answer.
 */
import * as dnsPacket from "dns-packet";
import type { Answer, Packet } from "dns-packet";
import { lookupHost, TABLE_TTL_SECONDS } from "./name-table.js";
import type { LookupTable } from "./name-table.js";

export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3 } as const;

/** The largest UDP answer without EDNS (RFC 1035 §4.2.1). */
export const UDP_PLAIN_LIMIT = 512;

export type Decision =
  | { readonly kind: "table"; readonly response: Packet }
  | { readonly kind: "forward" }
  | { readonly kind: "malformed"; readonly response: Packet };

function responseFlags(query: Packet, rcode: number, authoritative: boolean): number {
  const recursionDesired = ((query.flags ?? 0) & dnsPacket.RECURSION_DESIRED) !== 0;
  return (
    (authoritative ? dnsPacket.AUTHORITATIVE_ANSWER : 0) |
    (recursionDesired ? dnsPacket.RECURSION_DESIRED : 0) |
    dnsPacket.RECURSION_AVAILABLE |
    rcode
  );
}

/** The EDNS OPT record of the query, echoed (with our UDP size) in table answers as RFC 6891 §7 asks. */
function optOf(query: Packet): Answer[] {
  const opt = (query.additionals ?? []).find((a) => a.type === "OPT");
  return opt === undefined
    ? []
    : [
        {
          type: "OPT",
          name: ".",
          udpPayloadSize: 1232,
          extendedRcode: 0,
          ednsVersion: 0,
          flags: 0,
          flag_do: false,
          options: [],
        },
      ];
}

export function decide(query: Packet, table: LookupTable | undefined): Decision {
  const questions = query.questions ?? [];
  const question = questions[0];
  if (query.type !== "query" || question === undefined || questions.length !== 1) {
    return {
      kind: "malformed",
      response: { type: "response", id: query.id ?? 0, flags: responseFlags(query, RCODE.FORMERR, false), questions },
    };
  }
  if (table === undefined || (question.type !== "A" && question.type !== "AAAA") || question.class !== "IN") {
    return { kind: "forward" };
  }
  const result = lookupHost(table, question.type, question.name);
  if (!result.found) return { kind: "forward" };
  const answers: Answer[] = [];
  if (result.cname !== undefined) {
    answers.push({
      type: "CNAME",
      name: question.name,
      ttl: TABLE_TTL_SECONDS,
      class: "IN",
      data: result.cname.target,
    });
  }
  const owner = result.cname === undefined ? question.name : result.owner;
  for (const ip of result.addresses) {
    answers.push({ type: question.type, name: owner, ttl: TABLE_TTL_SECONDS, class: "IN", data: ip });
  }
  return {
    kind: "table",
    response: {
      type: "response",
      id: query.id ?? 0,
      flags: responseFlags(query, RCODE.NOERROR, true),
      questions,
      answers: shuffled(answers),
      additionals: optOf(query),
    },
  };
}

/** Address records in random order (kube-dns does the same; clients that take the first spread the load). */
function shuffled(answers: Answer[]): Answer[] {
  const head = answers.filter((a) => a.type === "CNAME");
  const rest = answers.filter((a) => a.type !== "CNAME");
  for (let i = rest.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [rest[i], rest[j]] = [rest[j] as Answer, rest[i] as Answer];
  }
  return [...head, ...rest];
}

/** The largest answer the client takes over UDP: its EDNS size, else 512. */
export function udpLimit(query: Packet): number {
  const opt = (query.additionals ?? []).find((a) => a.type === "OPT") as { udpPayloadSize?: number } | undefined;
  return Math.max(UDP_PLAIN_LIMIT, opt?.udpPayloadSize ?? UDP_PLAIN_LIMIT);
}

/** Encodes a table answer; too large for the client's UDP limit, the answer is emptied and marked truncated (TC). */
export function encodeForUdp(response: Packet, limit: number): Buffer {
  const full = dnsPacket.encode(response);
  if (full.length <= limit) return full;
  return dnsPacket.encode({ ...response, answers: [], flags: (response.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE });
}

/** A SERVFAIL for the query: only when no upstream answered at all. */
export function serverFailure(query: Packet): Packet {
  return {
    type: "response",
    id: query.id ?? 0,
    flags: responseFlags(query, RCODE.SERVFAIL, false),
    questions: query.questions ?? [],
  };
}
