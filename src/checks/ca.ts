/**
 * The CA check: CA_ADDR is reachable over TCP, completes a TLS handshake (offering h2, as the gRPC CA requires),
 * presents a certificate for ISTIOD_SAN (legacy: `istio-ca`, the name node agents dialled; istiod:
 * `istiod.<ns>.svc`), and that certificate chains to this VM's root-cert.pem. Each step fails with its own hint.
 */
import type { Check, CheckDeps } from "./check.js";
import { certPaths, fail, pass, splitHostPort } from "./check.js";

export const CA_CHECK = "ca";

const WRONG_ROOT = new Set([
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_SIGNATURE_FAILURE",
]);

export function caCheck(deps: CheckDeps): Check {
  const v = deps.values;
  return {
    name: CA_CHECK,
    description: "CA_ADDR accepts TCP and TLS, presents ISTIOD_SAN, and chains to root-cert.pem",
    async run() {
      const { host, port, text } = splitHostPort(v.CA_ADDR);
      const paths = certPaths(v);
      const root = await deps.fs.readTextIfExists(paths.root);
      if (root === undefined) {
        return fail(
          CA_CHECK,
          `${paths.root} is missing`,
          "install the mesh root certificate (`istio-vm certs` on the admin machine, then `istio-vm install`)",
        );
      }
      const chain = await deps.fs.readTextIfExists(paths.chain);
      const key = await deps.fs.readTextIfExists(paths.key);
      const result = await deps.tls.probe({
        host,
        port,
        servername: v.ISTIOD_SAN,
        ca: root,
        ...(chain !== undefined && key !== undefined ? { cert: chain, key } : {}),
        alpn: ["h2"],
        timeoutMs: deps.timeoutMs,
      });
      const details = [`TLS to ${text}, expecting server name ${v.ISTIOD_SAN}, trusting ${paths.root}`];
      if (result.ok) {
        return pass(
          CA_CHECK,
          `CA at ${text} (${result.address}) is ${v.ISTIOD_SAN}, chain ok`,
          [
            ...details,
            `server certificate ${result.peer.altNames.join(", ")} until ${result.peer.validTo}`,
            `issuer ${result.peer.issuer}`,
          ],
          { address: result.address, peer: result.peer },
        );
      }
      if (result.address !== undefined) details.push(`connected to ${result.address}`);
      if (result.peer !== undefined)
        details.push(`server certificate ${result.peer.altNames.join(", ") || result.peer.subject}`);
      details.push(`${result.step.toUpperCase()}: ${result.code}: ${result.message}`);
      const data = { step: result.step, code: result.code, address: result.address ?? null, peer: result.peer ?? null };
      if (result.step === "tcp") {
        const hint =
          result.code === "ENOTFOUND" || result.code === "EAI_AGAIN"
            ? `${host} does not resolve: see the dns check (the address=/${host}/ line of kubedns)`
            : result.code === "ECONNREFUSED"
              ? `nothing listens at ${text}: check CA_ADDR's port and the address for ${host} in kubedns against the CA's load balancer`
              : `no TCP connection to ${text} (${result.code}): a wrong address for ${host} in kubedns, or a firewall`;
        return fail(CA_CHECK, `CA at ${text} unreachable (${result.code})`, hint, details, data);
      }
      if (result.code === "ERR_TLS_CERT_ALTNAME_INVALID") {
        const presented = result.peer?.altNames.join(", ") ?? "another name";
        return fail(
          CA_CHECK,
          `the server at ${text} presents ${presented}, not ${v.ISTIOD_SAN}`,
          `${host} leads to a server that is not the mesh CA (check its address in kubedns), or set ISTIOD_SAN to the name the CA's certificate carries`,
          details,
          data,
        );
      }
      if (WRONG_ROOT.has(result.code)) {
        return fail(
          CA_CHECK,
          `the CA's certificate does not chain to ${paths.root}`,
          `root-cert.pem is not this mesh's root (another cluster, or the CA's root was rotated): reinstall it with \`istio-vm certs\`/\`istio-vm install\``,
          details,
          data,
        );
      }
      if (result.code === "CERT_HAS_EXPIRED") {
        return fail(
          CA_CHECK,
          `the CA's certificate has expired`,
          `the CA at ${text} serves an expired certificate: restart or fix the CA`,
          details,
          data,
        );
      }
      return fail(
        CA_CHECK,
        `TLS with ${text} failed (${result.code})`,
        `${text} did not complete a TLS handshake: is it the CA's TLS port (legacy 8060, istiod 15012) and not a plain-text one?`,
        details,
        data,
      );
    },
  };
}
