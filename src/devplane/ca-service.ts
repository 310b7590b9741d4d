/**
 * The Istio CA as a dev service of `istio-vm dev`: both protocols (legacy HandleCSR, istiod CreateCertificate) on one
 * TLS port, signing with the dev mesh root; service-account tokens are checked with the dev API's verifier (audience
 * `istio-ca`, as istiod's TokenReview does). Environment knobs for `istio-vm dev` run as a subprocess:
 * `ISTIO_VM_DEV_CA_FAULT` (e.g. `unavailable`, `delay:5000`) starts it with a fault in force (tests change it later
 * with `setRemoteCaFault`); `ISTIO_VM_DEV_CA_DEFAULT_TTL` / `ISTIO_VM_DEV_CA_MAX_TTL` (e.g. `2m`, `24h`) set the
 * lifetime given when none is requested and the cap on requested lifetimes.
 */
import type { DevService } from "./dev-plane.js";
import type { CaFault } from "./ca-faults.js";
import { parseCaFault } from "./ca-faults.js";
import type { DevCaServer } from "./ca-server.js";
import { startDevCaServer } from "./ca-server.js";
import { DEFAULT_TOKEN_AUDIENCE } from "./sa-tokens.js";
import { duration } from "../config/types.js";

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
      const env = options.env ?? process.env;
      const ttl = (name: string, fallback: number | undefined): number | undefined => {
        const raw = env[name];
        if (raw === undefined || raw === "") return fallback;
        try {
          return duration.parse(raw);
        } catch (error) {
          throw new Error(`${name}: ${(error as Error).message}`, { cause: error });
        }
      };
      const defaultTtlMs = ttl("ISTIO_VM_DEV_CA_DEFAULT_TTL", options.defaultTtlMs);
      const maxTtlMs = ttl("ISTIO_VM_DEV_CA_MAX_TTL", options.maxTtlMs);
      const [host = "127.0.0.1", ...extraHosts] = ctx.listenHosts;
      const port = ctx.ports.get("ca");
      const server = await startDevCaServer({
        mesh: ctx.meshCa,
        host,
        extraHosts,
        ...(port === undefined ? {} : { port }),
        ...(defaultTtlMs === undefined ? {} : { defaultTtlMs }),
        ...(maxTtlMs === undefined ? {} : { maxTtlMs }),
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
