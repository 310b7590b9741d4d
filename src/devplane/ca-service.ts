/**
 * The Istio CA as a dev service of `istio-vm dev`: both protocols (legacy HandleCSR, istiod CreateCertificate) on one
 * TLS port, signing with the dev mesh root; service-account tokens are checked with the dev API's verifier (audience
 * `istio-ca`, as istiod's TokenReview does). `ISTIO_VM_DEV_CA_FAULT` (e.g. `unavailable`, `delay:5000`) starts it with
 * a fault in force; tests change it later with `setRemoteCaFault`.
 */
import type { DevService } from "./dev-plane.js";
import type { CaFault, DevCaServer } from "./ca-server.js";
import { parseCaFault, startDevCaServer } from "./ca-server.js";
import { DEFAULT_TOKEN_AUDIENCE } from "./sa-tokens.js";

export interface DevCaServiceOptions {
  /** Lifetime of workload certificates when the caller asks for none (default 24 h). */
  readonly defaultTtlMs?: number;
  /** Cap on requested lifetimes (default 90 days, istiod's MAX_WORKLOAD_CERT_TTL). */
  readonly maxTtlMs?: number;
  readonly env?: NodeJS.ProcessEnv;
  /** Receives the server once started (tests in the same process set `fault` on it). */
  readonly onStarted?: (server: DevCaServer) => void;
}

export function devCaService(options: DevCaServiceOptions = {}): DevService {
  return {
    name: "ca",
    async start(ctx) {
      const faultText = (options.env ?? process.env)["ISTIO_VM_DEV_CA_FAULT"];
      let fault: CaFault | undefined;
      if (faultText !== undefined && faultText !== "") fault = parseCaFault(faultText);
      const [host = "127.0.0.1", ...extraHosts] = ctx.listenHosts;
      const port = ctx.ports.get("ca");
      const server = await startDevCaServer({
        mesh: ctx.meshCa,
        host,
        extraHosts,
        ...(port === undefined ? {} : { port }),
        ...(options.defaultTtlMs === undefined ? {} : { defaultTtlMs: options.defaultTtlMs }),
        ...(options.maxTtlMs === undefined ? {} : { maxTtlMs: options.maxTtlMs }),
        ...(fault === undefined ? {} : { fault }),
        legacyLayout: "0.8",
        verifyToken: (token) => {
          try {
            const verified = ctx.tokens.verify(token, DEFAULT_TOKEN_AUDIENCE);
            return Promise.resolve({ namespace: verified.namespace, serviceAccount: verified.serviceAccount });
          } catch {
            return Promise.resolve(undefined);
          }
        },
        logger: ctx.logger.child("ca"),
      });
      options.onStarted?.(server);
      const label =
        ctx.profile === "legacy"
          ? "grpc (Istio CA: HandleCSR; CreateCertificate)"
          : "grpc (Istio CA: CreateCertificate; HandleCSR)";
      return {
        name: "ca",
        addresses: server.addresses.map((address) => ({ name: label, address })),
        close: () => server.close(),
      };
    },
  };
}
