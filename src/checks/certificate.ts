/**
 * The certificate check: the workload certificate in OUTPUT_CERTS is one Envoy and the CA will accept — the chain
 * leads to root-cert.pem, the leaf names exactly this VM's SPIFFE identity, it is valid now, key.pem is its key —
 * and how long it has left. Verification is the certificate loop's own (`src/certs/verify.ts`), so `check` and the
 * agent agree on what a good certificate is.
 */
import { CertStore } from "../certs/store.js";
import { CertificateRejected, describeLeaf, verifyPair } from "../certs/verify.js";
import type { Check, CheckDeps } from "./check.js";
import { certPaths, fail, pass } from "./check.js";

export const CERTIFICATE_CHECK = "certificate";

function left(ms: number): string {
  const hours = ms / 3_600_000;
  if (hours >= 48) return `${Math.floor(hours / 24)}d left`;
  if (hours >= 1) return `${Math.floor(hours)}h left`;
  return `${Math.max(0, Math.floor(ms / 60_000))}m left`;
}

export function certificateCheck(deps: CheckDeps): Check {
  const v = deps.values;
  return {
    name: CERTIFICATE_CHECK,
    description: "cert-chain.pem chains to root-cert.pem, names this VM's identity, is valid, matches key.pem",
    async run() {
      const paths = certPaths(v);
      const expectedIdentity = `spiffe://${v.TRUST_DOMAIN}/ns/${v.POD_NAMESPACE}/sa/${v.SERVICE_ACCOUNT}`;
      // Through the store's reader: the key and chain of one generation, never a pair torn by a renewal.
      const store = new CertStore({ dir: v.OUTPUT_CERTS, fs: deps.fs, links: deps.links });
      const [rootPem, pair] = await Promise.all([
        store.readRoot(),
        store.read().catch((error: unknown) => {
          if ((error as NodeJS.ErrnoException).code === "EACCES") return "EACCES" as const;
          throw error;
        }),
      ]);
      let halves: string[] = [];
      if (pair === undefined) {
        const present = await Promise.all([paths.chain, paths.key].map((p) => deps.fs.exists(p)));
        halves = [paths.chain, paths.key].filter((_, i) => present[i] !== true);
        // Both files there and still no pair: a generation went away under the reader; both count as missing.
        if (halves.length === 0) halves = [paths.chain, paths.key];
      }
      const missing = [...(rootPem === undefined ? [paths.root] : []), ...halves];
      if (missing.length > 0 || rootPem === undefined || pair === undefined) {
        return fail(
          CERTIFICATE_CHECK,
          `missing ${missing.join(", ")}`,
          v.ISTIO_CONTROL_PLANE === "legacy"
            ? "install the bootstrap certificates (`istio-vm certs SA NS` on the admin machine, then `istio-vm install`)"
            : `install root-cert.pem and a token at ${v.ISTIO_TOKEN_FILE}, then start the agent: it requests the first certificate`,
        );
      }
      if (pair === "EACCES") {
        return fail(
          CERTIFICATE_CHECK,
          `cannot read ${paths.key}`,
          "run the check as root or as the proxy user (key.pem is 0600)",
        );
      }
      const { keyPem, chainPem } = pair;
      const now = deps.clock.now();
      try {
        const { info } = verifyPair({ keyPem, chainPem, rootPem, expectedIdentity, now });
        const remaining = info.notAfter.getTime() - now;
        const lifetime = info.notAfter.getTime() - info.notBefore.getTime();
        const details = [
          `${paths.chain}: ${info.uris.join(", ")} (${info.keyType}), ${info.notBefore.toISOString()} → ${info.notAfter.toISOString()}`,
          `issuer ${info.issuer}`,
        ];
        const data = {
          identity: info.uris[0] ?? null,
          notAfter: info.notAfter.toISOString(),
          remainingMs: remaining,
          lifetimeMs: lifetime,
        };
        return pass(
          CERTIFICATE_CHECK,
          `${expectedIdentity} valid until ${info.notAfter.toISOString()} (${left(remaining)})`,
          details,
          data,
        );
      } catch (error) {
        if (!(error instanceof CertificateRejected)) throw error;
        const leaf = describeLeaf(chainPem);
        const details =
          leaf === undefined
            ? []
            : [`${paths.chain}: ${leaf.uris.join(", ") || leaf.subject}, until ${leaf.notAfter.toISOString()}`];
        const hints: Record<string, string> = {
          expired:
            "the certificate expired (the agent could not renew it in time): re-provision this VM (`istio-vm certs` / a new token), then restart the agent",
          "not-yet-valid": "the certificate is not valid yet: check this VM's clock (timedatectl)",
          identity: `the certificate is for another workload: POD_NAMESPACE=${v.POD_NAMESPACE}, SERVICE_ACCOUNT=${v.SERVICE_ACCOUNT} and TRUST_DOMAIN=${v.TRUST_DOMAIN} must match the identity it was issued for`,
          chain:
            "cert-chain.pem is not signed by root-cert.pem's root: both must come from the same mesh (reinstall them together)",
          "key-mismatch":
            "key.pem does not belong to cert-chain.pem: a half-finished renewal or mixed copies; reinstall both or restart the agent to renew",
          malformed: "a PEM file is damaged: reinstall the certificates",
        };
        return fail(CERTIFICATE_CHECK, error.message, hints[error.reason] ?? "reinstall the certificates", details, {
          reason: error.reason,
        });
      }
    },
  };
}
