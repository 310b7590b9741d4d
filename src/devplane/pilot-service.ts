/**
 * Pilot as a dev service of `istio-vm dev`: the v1 REST API (registration, clusters, listeners, routes; port name
 * `pilot-http`, legacy 8080, and on the legacy profile also over mTLS, `pilot-http-tls`, Pilot's 15003), the
 * ADS server in plain text (`pilot-grpc`, 15010) and over TLS (`pilot-grpc-tls`, istiod 15012 / legacy 15011) with a
 * serving certificate from the dev mesh CA for Pilot's and istiod's names. On the legacy profile the ADS servers
 * also serve xDS v2 (Istio 0.8's Pilot, src/devplane/pilot-xds-v2.ts). Like a running Pilot pod, it publishes its
 * own Endpoints (`istio-pilot` or `istiod` in istio-system), so the registration check of the original recipe
 * (`/v1/registration/istio-pilot.istio-system.svc.cluster.local|http-discovery`) finds hosts.
 *
 * Faults: `ISTIO_VM_DEV_PILOT_FAULT=registry-unavailable,stream-reset` at start, or later
 * `POST http://<pilot-http>/istio-vm-dev/fault` with the names (`none` clears). `registry-unavailable`: the REST API
 * answers 503; `stream-reset`: the ADS servers reset every stream at its next request.
 *
 * `GET http://<pilot-http>/istio-vm-dev/proxies` lists the proxies connected to the ADS servers: the node each sent
 * (id, cluster, metadata), the identity it proved and its auto-registered WorkloadEntry. The ADS servers check that
 * identity as istiod does.
 *
 * istiod profile: one WorkloadEntry auto-registration controller for all its ADS servers (src/devplane/pilot-autoreg.ts),
 * with istiod's grace period, or `PILOT_WORKLOAD_ENTRY_GRACE_PERIOD` (as istiod reads it: `500ms`, `10s`, `2m`).
 */
import { isIP } from "node:net";
import { systemClock } from "../platform/clock.js";
import type { Clock } from "../platform/clock.js";
import { AutoRegistration, DEFAULT_GRACE_PERIOD_MS } from "./pilot-autoreg.js";
import type { DevPlaneContext, DevService } from "./dev-plane.js";
import type { PilotRestServer } from "./pilot-rest.js";
import { startPilotRest } from "./pilot-rest.js";
import type { PilotXdsServer } from "./pilot-xds.js";
import { startPilotXds } from "./pilot-xds.js";
import { ADS_V2 } from "./pilot-xds-v2.js";
import { DEFAULT_TOKEN_AUDIENCE } from "./sa-tokens.js";
import type { KubeObject } from "./store.js";

export const PILOT_FAULTS = ["registry-unavailable", "stream-reset"] as const;
const ISTIO_NAMESPACE = "istio-system";

export function pilotServerNames(namespace: string): string[] {
  return [
    "istiod",
    `istiod.${namespace}`,
    `istiod.${namespace}.svc`,
    `istiod.${namespace}.svc.cluster.local`,
    "istio-pilot",
    `istio-pilot.${namespace}`,
    `istio-pilot.${namespace}.svc`,
    `istio-pilot.${namespace}.svc.cluster.local`,
    "localhost",
  ];
}

function publishEndpoints(
  ctx: DevPlaneContext,
  ip: string,
  ports: { rest: number; grpc: number; grpcTls: number },
): void {
  const name = ctx.profile === "legacy" ? "istio-pilot" : "istiod";
  const endpointPorts =
    ctx.profile === "legacy"
      ? [
          { name: "http-discovery", port: ports.rest },
          { name: "grpc-xds", port: ports.grpc },
          { name: "https-xds", port: ports.grpcTls },
        ]
      : [
          { name: "grpc-xds", port: ports.grpc },
          { name: "https-dns", port: ports.grpcTls },
        ];
  const object: KubeObject = {
    apiVersion: "v1",
    kind: "Endpoints",
    metadata: { name, namespace: ISTIO_NAMESPACE, labels: { app: name } },
    subsets: [{ addresses: [{ ip }], ports: endpointPorts }],
  };
  const current = ctx.store.tryGet("endpoints", ISTIO_NAMESPACE, name);
  if (current === undefined) ctx.store.create("endpoints", object);
  else ctx.store.update("endpoints", { ...object, metadata: { ...current.metadata, ...object.metadata } });
}

/** A Go duration as istiod's PILOT_WORKLOAD_ENTRY_GRACE_PERIOD takes it, in ms; undefined when it is not one. */
export function parseGracePeriod(raw: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(raw.trim());
  if (m === null) return undefined;
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as "ms" | "s" | "m" | "h"];
  return Math.round(Number(m[1]) * unit);
}

export function pilotDevService(
  options: { readonly env?: NodeJS.ProcessEnv; readonly clock?: Clock } = {},
): DevService {
  return {
    name: "pilot",
    async start(ctx) {
      const initial = ((options.env ?? process.env)["ISTIO_VM_DEV_PILOT_FAULT"] ?? "")
        .split(",")
        .map((s) => s.trim())
        .filter((s) => s !== "" && s !== "none");
      for (const f of initial) {
        if (!(PILOT_FAULTS as readonly string[]).includes(f)) {
          throw new Error(`ISTIO_VM_DEV_PILOT_FAULT: unknown fault '${f}' (known: ${PILOT_FAULTS.join(", ")}, none)`);
        }
      }
      const graceRaw = (options.env ?? process.env)["PILOT_WORKLOAD_ENTRY_GRACE_PERIOD"];
      const gracePeriodMs = graceRaw === undefined ? DEFAULT_GRACE_PERIOD_MS : parseGracePeriod(graceRaw);
      if (gracePeriodMs === undefined) {
        throw new Error(
          `PILOT_WORKLOAD_ENTRY_GRACE_PERIOD: '${graceRaw ?? ""}' is not a duration such as 10s or 500ms`,
        );
      }
      const autoRegistration =
        ctx.profile === "istiod"
          ? new AutoRegistration({
              store: ctx.store,
              clock: options.clock ?? systemClock,
              gracePeriodMs,
              logger: ctx.logger.child("wle"),
            })
          : undefined;
      const serving = await ctx.meshCa.issueKeyPair({
        // Legacy Pilot's certificate names its service account: v1 Envoy checks it (verify_subject_alt_name), as do
        // the 0.8 bootstrap and the legacy v3 one (src/envoy/bootstrap.ts discoverySan).
        ...(ctx.profile === "legacy"
          ? { identity: `spiffe://${ctx.trustDomain}/ns/${ISTIO_NAMESPACE}/sa/istio-pilot-service-account` }
          : {}),
        dnsNames: pilotServerNames(ISTIO_NAMESPACE),
        ipAddresses: ctx.listenHosts.filter((h) => isIP(h) !== 0 && h !== "0.0.0.0" && h !== "::"),
        subject: { commonName: "istio-vm dev pilot" },
      });
      const rest: PilotRestServer[] = [];
      const restTls: PilotRestServer[] = [];
      const xds: PilotXdsServer[] = [];
      const closeAll = async (): Promise<void> => {
        await Promise.all([...rest, ...restTls, ...xds].map((s) => s.close()));
        await autoRegistration?.close();
      };
      const setXdsFault = (names: readonly string[]): string | undefined => {
        const unknown = names.filter((n) => n !== "none" && !(PILOT_FAULTS as readonly string[]).includes(n));
        if (unknown.length > 0) return `unknown fault ${unknown.join(", ")} (known: ${PILOT_FAULTS.join(", ")}, none)`;
        for (const s of xds) s.setFault(names.includes("stream-reset") ? "stream-reset" : "none");
        for (const s of restTls) s.setFault(names.includes("registry-unavailable") ? "registry-unavailable" : "none");
        return undefined;
      };
      const xdsLogger = ctx.logger.child("pilot-xds");
      const verifyToken = (token: string): { namespace: string; serviceAccount: string } | undefined => {
        try {
          return ctx.tokens.verify(token, DEFAULT_TOKEN_AUDIENCE);
        } catch {
          return undefined;
        }
      };
      try {
        for (const host of ctx.listenHosts) {
          const restPort = ctx.ports.get("pilot-http");
          const grpcPort = ctx.ports.get("pilot-grpc");
          const tlsPort = ctx.ports.get("pilot-grpc-tls");
          rest.push(
            await startPilotRest({
              store: ctx.store,
              host,
              ...(restPort === undefined ? {} : { port: restPort }),
              onFaultSwitch: setXdsFault,
              connectedProxies: () => xds.flatMap((s) => s.connections()),
            }),
          );
          if (ctx.profile === "legacy") {
            // Pilot's v1 API over mTLS (15003 in Istio 0.4–0.6), what v1 Envoy dials under MUTUAL_TLS.
            const restTlsPort = ctx.ports.get("pilot-http-tls");
            restTls.push(
              await startPilotRest({
                store: ctx.store,
                host,
                ...(restTlsPort === undefined ? {} : { port: restTlsPort }),
                tls: { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: ctx.meshCa.rootCertPem },
              }),
            );
          }
          xds.push(
            await startPilotXds({
              store: ctx.store,
              host,
              ...(grpcPort === undefined ? {} : { port: grpcPort }),
              logger: xdsLogger,
              v3OnlyWhenAsked: ctx.profile === "legacy",
              ...(ctx.profile === "legacy" ? { alsoServe: ADS_V2 } : {}),
              ...(autoRegistration === undefined ? {} : { autoRegistration }),
            }),
          );
          xds.push(
            await startPilotXds({
              store: ctx.store,
              host,
              ...(tlsPort === undefined ? {} : { port: tlsPort }),
              tls: { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: ctx.meshCa.rootCertPem },
              verifyToken,
              trustDomain: ctx.trustDomain,
              logger: xdsLogger,
              v3OnlyWhenAsked: ctx.profile === "legacy",
              ...(ctx.profile === "legacy" ? { alsoServe: ADS_V2 } : {}),
              ...(autoRegistration === undefined ? {} : { autoRegistration }),
            }),
          );
        }
      } catch (error) {
        await closeAll();
        throw error;
      }
      for (const s of [...rest, ...restTls]) {
        s.setFault(initial.includes("registry-unavailable") ? "registry-unavailable" : "none");
      }
      setXdsFault(initial);
      const first = ctx.listenHosts.find((h) => h !== "0.0.0.0" && h !== "::") ?? "127.0.0.1";
      const index = ctx.listenHosts.indexOf(first);
      const r = rest[Math.max(0, index)];
      const plain = xds[Math.max(0, index) * 2];
      const secure = xds[Math.max(0, index) * 2 + 1];
      if (r !== undefined && plain !== undefined && secure !== undefined) {
        publishEndpoints(ctx, first === "0.0.0.0" ? "127.0.0.1" : first, {
          rest: r.port,
          grpc: plain.port,
          grpcTls: secure.port,
        });
      }
      return {
        name: "pilot",
        addresses: [
          ...rest.map((s) => ({ name: "http (v1 REST: registration, clusters, listeners, routes)", address: s.url })),
          ...restTls.map((s) => ({ name: "https+mTLS (v1 REST)", address: s.url })),
          ...xds.map((s) => ({ name: s.tls ? "grpc+tls (xDS ADS)" : "grpc (xDS ADS)", address: s.address })),
        ],
        close: closeAll,
      };
    },
  };
}
