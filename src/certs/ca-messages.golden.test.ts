/**
 * The exact bytes of representative CA messages, pinned in __golden__/ca-messages.hex. They were recorded from the
 * hand-written codec that first spoke to Istio's CAs, so a change of library or .proto cannot change the wire form
 * unnoticed; decoding the pinned bytes must give back the message.
 */
import { describe, expect, it } from "vitest";
import {
  decodeCsrRequest,
  decodeCsrResponse,
  decodeIstioCertificateRequest,
  decodeIstioCertificateResponse,
  encodeCsrRequest,
  encodeCsrResponse,
  encodeIstioCertificateRequest,
  encodeIstioCertificateResponse,
} from "./ca-messages.js";

const CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIBCzCBsgIBADAAMFkw\n-----END CERTIFICATE REQUEST-----\n";
const LEAF = "-----BEGIN CERTIFICATE-----\nMIIBLEAF\n-----END CERTIFICATE-----\n";
const ROOT = "-----BEGIN CERTIFICATE-----\nMIIBROOT\n-----END CERTIFICATE-----\n";

interface Case {
  readonly name: string;
  readonly message: unknown;
  readonly bytes: Uint8Array;
  readonly decode: (bytes: Uint8Array) => unknown;
}
const cases = <T>(encode: (message: T) => Uint8Array, decode: (bytes: Uint8Array) => T, list: [string, T][]): Case[] =>
  list.map(([name, message]) => ({ name, message, bytes: encode(message), decode }));

const ALL: Case[] = [
  ...cases(encodeCsrRequest, decodeCsrRequest, [
    [
      "CsrRequest onprem, 0.8",
      { csrPem: CSR, nodeAgentCredential: LEAF, credentialType: "onprem", requestedTtlMinutes: 1440 },
    ],
    [
      "CsrRequest without credential or TTL (0.2)",
      { csrPem: CSR, nodeAgentCredential: "", credentialType: "onprem", requestedTtlMinutes: 0 },
    ],
    ["CsrRequest negative TTL", { csrPem: "x", nodeAgentCredential: "", credentialType: "", requestedTtlMinutes: -1 }],
  ]),
  ...cases(encodeCsrResponse, decodeCsrResponse, [
    ["CsrResponse approved, 0.8 layout", { isApproved: true, signedCert: LEAF, certChain: ROOT }],
    ["CsrResponse approved, 0.7 layout", { isApproved: true, signedCert: LEAF + ROOT, certChain: "" }],
    [
      "CsrResponse denied with status",
      { isApproved: false, status: { code: 7, message: "not authorized" }, signedCert: "", certChain: "" },
    ],
    [
      "CsrResponse empty status",
      { isApproved: false, status: { code: 0, message: "" }, signedCert: "", certChain: "" },
    ],
  ]),
  ...cases(encodeIstioCertificateRequest, decodeIstioCertificateRequest, [
    ["IstioCertificateRequest 24h", { csr: CSR, validityDurationSeconds: 86_400 }],
    ["IstioCertificateRequest CA default", { csr: CSR, validityDurationSeconds: 0 }],
    ["IstioCertificateRequest large and negative", { csr: "x", validityDurationSeconds: -5 }],
    ["IstioCertificateRequest 2^40 s", { csr: "x", validityDurationSeconds: 2 ** 40 }],
  ]),
  ...cases(encodeIstioCertificateResponse, decodeIstioCertificateResponse, [
    ["IstioCertificateResponse leaf, root", { certChain: [LEAF, ROOT] }],
    ["IstioCertificateResponse with an empty element", { certChain: [LEAF, "", ROOT] }],
    ["IstioCertificateResponse empty", { certChain: [] }],
  ]),
];

describe("CA message bytes", () => {
  it("encode exactly as pinned", async () => {
    const text = ALL.map((c) => `${c.name}\n${Buffer.from(c.bytes).toString("hex")}\n`).join("");
    await expect(text).toMatchFileSnapshot("__golden__/ca-messages.hex");
  });

  it.each(ALL.map((c) => [c.name, c] as const))("%s decodes back to the message", (_name, c) => {
    expect(c.decode(c.bytes)).toEqual(c.message);
  });
});
