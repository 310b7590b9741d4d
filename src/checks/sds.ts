/**
 * The SDS check (istiod profile): the agent's SDS socket answers, and the chain it serves Envoy as `default` is the
 * store's cert-chain.pem, byte for byte. A difference means a renewal on disk that Envoy did not get. The check is a
 * one-shot SDS client (src/sds/client.ts): it needs the socket's permission (root or the proxy user).
 */
import { X509Certificate } from "node:crypto";
import { describeError } from "../platform/errors.js";
import { SdsFetchError, fetchSecrets } from "../sds/client.js";
import { WORKLOAD_SECRET } from "../sds/names.js";
import { sdsSocketPath, usesSds } from "../sds/socket.js";
import type { Check, CheckDeps } from "./check.js";
import { certPaths, fail, pass, skip } from "./check.js";

export const SDS_CHECK = "sds";

function serial(pem: string): string {
  try {
    return new X509Certificate(pem).serialNumber.toLowerCase();
  } catch {
    return "unparsable";
  }
}

export function sdsCheck(deps: CheckDeps): Check {
  const v = deps.values;
  return {
    name: SDS_CHECK,
    description: "the agent's SDS socket serves Envoy the store's certificate chain",
    async run(signal) {
      if (!usesSds(v)) return skip(SDS_CHECK, "legacy profile: Envoy reads the certificate files (no SDS)");
      const socket = sdsSocketPath(v);
      const chainPath = certPaths(v).chain;
      const storeChain = await deps.fs.readTextIfExists(chainPath);
      let fetched;
      try {
        fetched = await fetchSecrets(socket, [WORKLOAD_SECRET], { timeoutMs: deps.timeoutMs, signal });
      } catch (error) {
        const reason = error instanceof SdsFetchError ? error.reason : "ERROR";
        const hint =
          reason === "ENOENT" || reason === "ECONNREFUSED"
            ? "the agent is not running or not serving SDS: `systemctl status istio-vm-agent`"
            : reason === "EACCES" || reason === "EPERM"
              ? `run the check as root or as ${v.ENVOY_USER}: the socket is 0600 (it hands out the private key)`
              : reason === "DEADLINE_EXCEEDED"
                ? "the agent has no certificate to serve yet: see the certificate check and `journalctl -u istio-vm-agent`"
                : "`journalctl -u istio-vm-agent` shows the SDS server's errors";
        return fail(SDS_CHECK, `no SDS answer on ${socket} (${reason})`, hint, [`${socket}: ${describeError(error)}`]);
      }
      const version = fetched.version;
      const chain = fetched.secrets.find((s) => s.name === WORKLOAD_SECRET)?.tls_certificate?.certificate_chain;
      const served = chain === undefined ? undefined : Buffer.from(chain.inline_bytes).toString("utf8");
      const details = [`${socket}: default v${version}, serial ${served === undefined ? "none" : serial(served)}`];
      if (served === undefined) {
        return fail(SDS_CHECK, "SDS answered without a certificate chain", "`journalctl -u istio-vm-agent`", details);
      }
      if (storeChain === undefined) {
        return fail(SDS_CHECK, `SDS serves a chain but ${chainPath} is missing`, "see the certificate check", details);
      }
      details.push(`${chainPath}: serial ${serial(storeChain)}`);
      if (served !== storeChain) {
        return fail(
          SDS_CHECK,
          `SDS serves serial ${serial(served)}, the store holds ${serial(storeChain)}`,
          "the agent did not push the certificate on disk (was it written by another tool?): `systemctl reload istio-vm-agent` re-reads it",
          details,
        );
      }
      return pass(SDS_CHECK, `SDS serves the store's chain (serial ${serial(served)}, v${version})`, details, {
        version,
        serial: serial(served),
      });
    },
  };
}
