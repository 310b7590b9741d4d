/**
 * `istio-vm certs status` and `istio-vm certs renew` as the built CLI in a subprocess, on a VM configuration pointing
 * at a dev CA (in this process) over TLS: first certificate from the token, renewal over mTLS, a refused renewal that
 * keeps the pair, and outputs free of keys and tokens.
 */
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import type { CertFixture } from "../support/cert-fixture.js";
import { NAMESPACE, SERVICE_ACCOUNT, createCertFixture } from "../support/cert-fixture.js";
import { runCli } from "../support/cli.js";

const PEM = /-----BEGIN [A-Z ]+-----/;
const JWT = /eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\./;

let fixture: CertFixture | undefined;
afterEach(async () => {
  await fixture?.close();
  fixture = undefined;
});

function vmEnv(f: CertFixture, protocol: "legacy" | "istiod"): NodeJS.ProcessEnv {
  return {
    PATH: process.env["PATH"] ?? "/usr/bin:/bin",
    ISTIO_VM_ROOT: join(f.dir, "root"),
    ISTIO_CONTROL_PLANE: protocol,
    CA_ADDR: `127.0.0.1:${f.server.port}`,
    ISTIOD_SAN: protocol === "legacy" ? "istio-ca" : "istiod.istio-system.svc",
    OUTPUT_CERTS: f.dir,
    ISTIO_TOKEN_FILE: f.tokenFile,
    POD_NAMESPACE: NAMESPACE,
    SERVICE_ACCOUNT,
    CA_CALL_TIMEOUT: "3s",
  };
}

describe("istio-vm certs status / renew", () => {
  it("istiod: no certificate → status fails; renew with the token; status ok; renew again over mTLS", async () => {
    fixture = await createCertFixture({ protocol: "istiod" });
    await mkdir(join(fixture.dir, "root"), { recursive: true });
    const env = vmEnv(fixture, "istiod");

    const missing = await runCli(["certs", "status"], { env });
    expect(missing.code).toBe(1);
    expect(missing.stdout).toMatch(/chain\s+NOT OK: no key and certificate/);

    const noToken = await runCli(["certs", "renew"], { env });
    expect(noToken.code).toBe(1);
    expect(noToken.stderr).toMatch(/renewal failed \(no-credential\)/);
    expect(noToken.stderr).toMatch(/hint: re-provision: .*istio-vm certs vm-sa vmns --all.*istio-vm install/);

    const token = await fixture.writeToken();
    const first = await runCli(["certs", "renew"], { env });
    expect(first.stderr).toBe("");
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(/renewed spiffe:\/\/cluster.local\/ns\/vmns\/sa\/vm-sa \(authenticated by token\)/);

    const status = await runCli(["certs", "status", "--json"], { env });
    expect(status.code).toBe(0);
    const report = JSON.parse(status.stdout) as {
      chainOk: boolean;
      identity: string;
      certificate: { uris: string[]; serialNumber: string; issuer: string };
      renewal: { inSeconds: number };
      expiresInSeconds: number;
      token: { present: boolean; expiresAt: string; expired: boolean };
    };
    expect(report.chainOk).toBe(true);
    expect(report.certificate.uris).toEqual([report.identity]);
    expect(report.certificate.issuer).toMatch(/istio-vm dev mesh CA/);
    // 24 h certificate, renewal at half its lifetime.
    expect(report.expiresInSeconds).toBeGreaterThan(23 * 3600);
    expect(report.renewal.inSeconds).toBeGreaterThan(11 * 3600);
    expect(report.renewal.inSeconds).toBeLessThan(13 * 3600);
    expect(report.token).toMatchObject({ present: true, expired: false });
    // The admin's token lives an hour (cert-fixture); status shows when a new one will be needed.
    expect(Date.parse(report.token.expiresAt) - Date.now()).toBeGreaterThan(3500_000);

    const text = await runCli(["certs", "status"], { env });
    expect(text.stdout).toMatch(/^identity\s+spiffe:\/\/cluster.local\/ns\/vmns\/sa\/vm-sa$/m);
    // A 24-hour certificate: X.509 times have whole seconds, so read within the second it was issued it may still
    // have a full day left ("1d0h"); CI once saw that.
    expect(text.stdout).toMatch(/^not after\s+\S+Z \(in (23h5\dm|1d0h)\)$/m);
    expect(text.stdout).toMatch(/^chain\s+ok: verifies to/m);
    expect(text.stdout).toMatch(
      /^token\s+\S+istio-token \(present, expires \S+Z; used only while there is no valid certificate\)$/m,
    );

    const second = await runCli(["certs", "renew", "--json"], { env });
    expect(second.code).toBe(0);
    const renewed = JSON.parse(second.stdout) as { authenticatedBy: string; serialNumber: string };
    expect(renewed.authenticatedBy).toBe("certificate");
    expect(renewed.serialNumber).not.toBe(report.certificate.serialNumber);

    for (const output of [missing, noToken, first, status, text, second]) {
      expect(output.stdout + output.stderr).not.toMatch(PEM);
      expect(output.stdout + output.stderr).not.toMatch(JWT);
      expect(output.stdout + output.stderr).not.toContain(token);
    }
  });

  it("legacy: a refused renewal exits 1 with the reason and a hint, and leaves the pair in place", async () => {
    fixture = await createCertFixture({ protocol: "legacy" });
    await mkdir(join(fixture.dir, "root"), { recursive: true });
    const env = vmEnv(fixture, "legacy");
    await fixture.installPair();
    const before = JSON.parse((await runCli(["certs", "status", "--json"], { env })).stdout) as {
      certificate: { serialNumber: string };
    };
    for (const [fault, reason] of [
      ["deny", "denied"],
      ["foreign-chain", "chain"],
      ["wrong-identity", "identity"],
    ] as const) {
      fixture.server.fault = { kind: fault };
      const result = await runCli(["certs", "renew"], { env });
      expect(result.code).toBe(1);
      expect(result.stderr).toContain(`certificate renewal failed (${reason})`);
      expect(result.stderr).toMatch(/the current pair is unchanged\n\s+hint: /);
      expect(result.stdout + result.stderr).not.toMatch(PEM);
      const after = JSON.parse((await runCli(["certs", "status", "--json"], { env })).stdout) as {
        chainOk: boolean;
        certificate: { serialNumber: string };
      };
      expect(after.chainOk).toBe(true);
      expect(after.certificate.serialNumber).toBe(before.certificate.serialNumber);
    }
    fixture.server.fault = undefined;
    const ok = await runCli(["certs", "renew"], { env });
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/authenticated by certificate/);
  });

  it("status reports an expired certificate and exits 1", async () => {
    fixture = await createCertFixture({ protocol: "legacy" });
    await mkdir(join(fixture.dir, "root"), { recursive: true });
    const now = Date.now();
    await fixture.installPair({ notBefore: new Date(now - 7200_000), notAfter: new Date(now - 3600_000) });
    const result = await runCli(["certs", "status"], { env: vmEnv(fixture, "legacy") });
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/^not after\s+\S+ \(1h\d+m ago\)$/m);
    expect(result.stdout).toMatch(/NOT OK: the certificate expired at/);
  });

  it("--help explains both subcommands with examples", async () => {
    const status = await runCli(["certs", "status", "--help"]);
    expect(status.stdout).toMatch(/istio-vm certs status --json/);
    const renew = await runCli(["certs", "renew", "--help"]);
    expect(renew.stdout).toMatch(/systemctl reload istio-vm-agent/);
  });
});
