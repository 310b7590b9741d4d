/** `istio-vm certs renew`: one renewal now, with the same checks as the agent's loop. */
import type { CommandModule } from "yargs";
import { RenewError, renewOnce } from "../certs/renew.js";
import { reprovisionHint } from "../certs/setup.js";
import { AgentError } from "../platform/errors.js";
import { renewContextFor, withCertAccess } from "./certs-access.js";
import type { CommandRuntime } from "./context.js";
import { renderJson } from "./render.js";

const HINTS: Partial<Record<RenewError["reason"], string>> = {
  unavailable:
    "check that CA_ADDR resolves and is reachable from this VM, and that ISTIOD_SAN matches the CA's certificate",
  deadline: "the CA did not answer within CA_CALL_TIMEOUT; check the network path to CA_ADDR",
  denied: "the CA refused to sign this identity; check SERVICE_ACCOUNT and POD_NAMESPACE against the cluster",
  "invalid-response": "the CA's answer could not be read; check that CA_ADDR is the mesh CA of ISTIO_CONTROL_PLANE",
  chain: "the CA signs with a root other than root-cert.pem; re-install root-cert.pem from the cluster",
  identity: "the CA issued a certificate for another identity; check SERVICE_ACCOUNT, POD_NAMESPACE and TRUST_DOMAIN",
  "no-root": "install root-cert.pem with `istio-vm install`",
  write: "OUTPUT_CERTS must be writable by the user running this (root, or ENVOY_USER as the agent runs)",
};

export function certsRenewCommand(runtime: () => CommandRuntime): CommandModule<object, object> {
  return {
    command: "renew",
    describe: "Renew this VM's workload certificate now (new key, CSR to the mesh CA, verify, replace the pair)",
    builder: (y) =>
      y
        .example("$0 certs renew", "renew now; the old pair stays unless the new one verifies")
        .example("systemctl reload istio-vm-agent", "then let the running agent pick up the new pair (Envoy restarts)")
        .epilogue(
          "Authenticates with the current certificate (mTLS); with ISTIO_CONTROL_PLANE=istiod and no valid certificate, " +
            "with the service-account token in ISTIO_TOKEN_FILE. The new key and chain replace the old ones as a pair " +
            "only after the chain verifies to root-cert.pem for this VM's identity.",
        ),
    handler: async () => {
      const rt = runtime();
      const { config, context } = await renewContextFor(rt);
      let result;
      try {
        result = await withCertAccess(config.OUTPUT_CERTS, () => renewOnce(context).finally(() => context.close?.()));
      } catch (error) {
        if (!(error instanceof RenewError)) throw error;
        const hint =
          error.reason === "no-credential" || error.reason === "unauthenticated"
            ? `re-provision: ${reprovisionHint(config)}${config.ISTIO_CONTROL_PLANE === "istiod" ? `, or put a new service-account token in ${config.ISTIO_TOKEN_FILE}` : ""}`
            : HINTS[error.reason];
        throw new AgentError({
          code: "CERT_RENEW_FAILED",
          message: `certificate renewal failed (${error.reason}): ${error.message}; the current pair is unchanged`,
          subject: context.store.paths.dir,
          ...(hint === undefined ? {} : { hint }),
        });
      }
      const report = {
        identity: context.identity,
        authenticatedBy: result.credential === "mtls" ? "certificate" : "token",
        serialNumber: result.info.serialNumber,
        issuer: result.info.issuer,
        keyType: result.info.keyType,
        notBefore: result.info.notBefore.toISOString().replace(/\.000Z$/, "Z"),
        notAfter: result.info.notAfter.toISOString().replace(/\.000Z$/, "Z"),
        files: { key: context.store.paths.key, chain: context.store.paths.chain },
      };
      rt.out(
        rt.options.json
          ? renderJson(report)
          : `renewed ${report.identity} (authenticated by ${report.authenticatedBy})\n` +
              `  serial ${report.serialNumber}, ${report.keyType}, valid until ${report.notAfter}\n` +
              `  wrote ${report.files.key} and ${report.files.chain}\n` +
              "  a running agent picks the new pair up at its next check; `systemctl reload istio-vm-agent` does it now\n",
      );
    },
  };
}
