import { describe, expect, it } from "vitest";
import { nodeProcessRunner } from "../platform/process.js";
import { createCsr, parseCsr } from "./csr.js";
import { generateWorkloadKey } from "./keys.js";

const ID = "spiffe://cluster.local/ns/vmns/sa/vm-sa";

async function openssl(args: string[], input: string): Promise<{ stdout: string; stderr: string }> {
  const result = await nodeProcessRunner.run("openssl", args, { input, timeoutMs: 20_000 });
  if (result.code !== 0) throw new Error(`openssl ${args.join(" ")}: ${result.stderr}`);
  return result;
}

describe.each([
  { type: "EC" as const, text: /id-ecPublicKey[\s\S]*P-256/ },
  { type: "RSA" as const, text: /rsaEncryption[\s\S]*2048 bit/ },
])("CSR with a $type key", ({ type, text }) => {
  it("is accepted by `openssl req -verify` and carries exactly the SPIFFE URI SAN", async () => {
    const key = await generateWorkloadKey({ type });
    const csr = await createCsr(key, ID);
    expect(csr).toMatch(/^-----BEGIN CERTIFICATE REQUEST-----\n/);
    const { stdout, stderr } = await openssl(["req", "-verify", "-noout", "-text"], csr);
    expect(`${stdout}${stderr}`).toMatch(/verify OK/);
    expect(stdout).toMatch(text);
    const sans = /X509v3 Subject Alternative Name:.*\n\s*(.*)\n/.exec(stdout)?.[1];
    expect(sans).toBe(`URI:${ID}`);
    const parsed = await parseCsr(csr);
    expect(parsed.uris).toEqual([ID]);
    expect(parsed.otherNames).toEqual([]);
    // The key written to key.pem is the CSR's key.
    const { stdout: pub } = await openssl(["pkey", "-pubout"], key.pem);
    expect(parsed.publicKey.export({ format: "pem", type: "spki" })).toBe(pub);
  });
});

describe("parseCsr", () => {
  it("rejects text that is not a CSR and a CSR whose signature does not match its key", async () => {
    await expect(parseCsr("hello")).rejects.toThrow(/not a PEM certificate request/);
    const csr = await createCsr(await generateWorkloadKey({ type: "EC" }), ID);
    const der = Buffer.from(csr.replace(/-----[A-Z ]+-----|\n/g, ""), "base64");
    der[der.length - 5] = (der[der.length - 5] ?? 0) ^ 0xff; // flip a byte of the signature
    const forged = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString("base64")}\n-----END CERTIFICATE REQUEST-----\n`;
    await expect(parseCsr(forged)).rejects.toThrow(/signature|not a PEM/);
  });

  it("refuses RSA keys below 2048 bits", async () => {
    await expect(generateWorkloadKey({ type: "RSA", rsaBits: 1024 })).rejects.toThrow(/at least 2048/);
  });
});
