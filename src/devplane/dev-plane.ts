/**
 * `istio-vm dev`, composed: one ObjectStore, the Kubernetes API over HTTPS, the cluster controllers and seed objects
 * of the chosen profile, and any number of attached dev services (kube-dns, the Istio CA, Pilot, ...).
 *
 * EXTENSION POINT (for the other dev servers): implement `DevService` and add it to `DEV_SERVICES` in
 * `src/devplane/services.ts` (one import + one entry). `start(ctx)` gets the shared store (read services, endpoints,
 * workloadentries; watch for changes), the mesh CA (sign workload certificates), the service-account token verifier
 * (`ctx.tokens.verify(jwt, "istio-ca")` → {namespace, serviceAccount}), the hosts to listen on and the profile. It
 * returns its addresses (printed by `istio-vm dev` and in its --json ready line) and a `close()` that
 * `DevPlane.close()` awaits, in reverse start order, on SIGTERM/SIGINT. Bind to `ctx.listenHosts` with port 0 unless
 * `ctx.ports` names one (tests run many dev planes side by side). Throw to fail the start (the dev plane then closes
 * what already started).
 */
import { networkInterfaces } from "node:os";
import { isIP } from "node:net";
import type { Logger } from "../platform/logger.js";
import { startControllers } from "./controllers.js";
import type { Controllers } from "./controllers.js";
import { ClusterIpAllocator } from "./ip-allocator.js";
import type { Cidr } from "./ip-allocator.js";
import { KubeApi } from "./kube-api.js";
import { startKubeApiServer } from "./kube-api-server.js";
import type { KubeApiServer } from "./kube-api-server.js";
import { defaultRbac } from "./kube-rbac.js";
import type { DevUser, RbacRule } from "./kube-rbac.js";
import { createMeshCa } from "./mesh-ca.js";
import type { MeshCa } from "./mesh-ca.js";
import { createServiceAccountTokens } from "./sa-tokens.js";
import type { ServiceAccountTokens } from "./sa-tokens.js";
import { pinnedLoadBalancerIps, seedCluster, seedObjects } from "./seed.js";
import type { Profile } from "./seed.js";
import { ObjectStore } from "./store.js";
import { randomBytes } from "node:crypto";
import { renderYaml } from "../kube/yaml.js";

export interface DevPlaneContext {
  readonly store: ObjectStore;
  readonly api: KubeApi;
  readonly meshCa: MeshCa;
  /** The CA of the Kubernetes API server (serving and client certificates). */
  readonly clusterCa: MeshCa;
  readonly tokens: ServiceAccountTokens;
  /** Hosts the dev plane listens on (e.g. ["127.0.0.1"]). */
  readonly listenHosts: readonly string[];
  /** Fixed ports by service name (from `--service-port NAME=PORT`); absent means an ephemeral port. */
  readonly ports: ReadonlyMap<string, number>;
  readonly profile: Profile;
  readonly trustDomain: string;
  readonly serviceCidrs: readonly Cidr[];
  readonly logger: Logger;
}

export interface DevServiceAddress {
  /** What is served there, e.g. "dns/udp", "grpc (legacy CA)". */
  readonly name: string;
  /** host:port or a URL. */
  readonly address: string;
}

export interface StartedDevService {
  readonly name: string;
  readonly addresses: readonly DevServiceAddress[];
  close(): Promise<void>;
}

export interface DevService {
  readonly name: string;
  start(ctx: DevPlaneContext): Promise<StartedDevService>;
}

export interface DevPlaneOptions {
  readonly profile: Profile;
  readonly listen: readonly { readonly host: string; readonly port: number }[];
  readonly serviceCidrs: readonly Cidr[];
  readonly serviceCidrApi: boolean;
  readonly lbIpBase: string;
  readonly lbDelayMs: number;
  readonly trustDomain: string;
  readonly workloadCertTtlMs: number;
  readonly services: readonly DevService[];
  readonly ports?: ReadonlyMap<string, number>;
  readonly logger: Logger;
}

export interface DevCredentials {
  readonly adminCertPem: string;
  readonly adminKeyPem: string;
  readonly tokenUserToken: string;
  readonly viewerToken: string;
}

export interface DevPlane {
  readonly context: DevPlaneContext;
  readonly kubeApi: KubeApiServer;
  readonly services: readonly StartedDevService[];
  readonly credentials: DevCredentials;
  /** A kubeconfig (YAML) with contexts istio-vm-dev (admin, client certificate), -token and -viewer. */
  kubeconfig(): string;
  close(): Promise<void>;
}

export const KUBECONFIG_CLUSTER = "istio-vm-dev";
export const KUBECONFIG_CONTEXTS = {
  admin: "istio-vm-dev",
  token: "istio-vm-dev-token",
  viewer: "istio-vm-dev-viewer",
} as const;

function serverNames(listen: readonly { host: string }[]): { dns: string[]; ips: string[] } {
  const ips = new Set(["127.0.0.1", "::1"]);
  for (const { host } of listen) {
    if (host === "0.0.0.0" || host === "::") {
      for (const list of Object.values(networkInterfaces()))
        for (const i of list ?? []) ips.add(i.address.split("%")[0] ?? "");
    } else if (isIP(host) !== 0) ips.add(host);
  }
  const dns = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
  ];
  for (const { host } of listen) if (isIP(host) === 0) dns.push(host);
  return { dns, ips: [...ips].filter((ip) => ip !== "") };
}

/** The kubeconfig URL for a listening URL: a wildcard bind is reached through loopback. */
function clientUrl(url: string): string {
  return url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:");
}

export async function startDevPlane(options: DevPlaneOptions): Promise<DevPlane> {
  const logger = options.logger;
  const store = new ObjectStore();
  const [meshCa, clusterCa] = await Promise.all([
    createMeshCa({ trustDomain: options.trustDomain }),
    createMeshCa({ trustDomain: options.trustDomain, commonName: "istio-vm dev cluster CA" }),
  ]);
  const tokens = createServiceAccountTokens();
  const api = new KubeApi({
    store,
    allocator: new ClusterIpAllocator(options.serviceCidrs),
    tokens,
    ...(options.serviceCidrApi ? {} : { disabledGroups: new Set(["networking.k8s.io"]) }),
  });
  const closers: (() => Promise<void>)[] = [
    () => {
      api.close();
      return Promise.resolve();
    },
  ];
  const closeAll = async (): Promise<void> => {
    for (const close of closers.reverse()) {
      try {
        await close();
      } catch (error) {
        logger.warn("closing a dev service failed", { error: (error as Error).message });
      }
    }
    closers.length = 0;
  };
  try {
    let controllers: Controllers | undefined = startControllers({
      api,
      meshCa,
      clusterCaPem: clusterCa.rootCertPem,
      profile: options.profile,
      workloadCertTtlMs: options.workloadCertTtlMs,
      lb: {
        delayMs: options.lbDelayMs,
        poolBase: options.lbIpBase,
        pinned: pinnedLoadBalancerIps(options.profile, options.lbIpBase),
      },
      onError: (what, error) => {
        logger.warn(`dev controller: ${what} failed`, { error: (error as Error).message });
      },
    });
    closers.push(() => {
      controllers?.close();
      controllers = undefined;
      return Promise.resolve();
    });
    seedCluster(
      api,
      seedObjects(options.profile, {
        serviceCidrs: options.serviceCidrs,
        serviceCidrApi: options.serviceCidrApi,
        trustDomain: options.trustDomain,
      }),
    );
    await controllers.idle();

    const names = serverNames(options.listen);
    const serving = await clusterCa.issueKeyPair({
      subject: { commonName: "kube-apiserver" },
      dnsNames: names.dns,
      ipAddresses: names.ips,
      clientAuth: false,
      ttlMs: 365 * 24 * 3600_000,
    });
    const admin = await clusterCa.issueKeyPair({
      subject: { commonName: "admin", organization: "system:masters" },
      serverAuth: false,
      ttlMs: 365 * 24 * 3600_000,
    });
    const tokenUserToken = randomBytes(24).toString("base64url");
    const viewerToken = randomBytes(24).toString("base64url");
    const staticTokens = new Map<string, DevUser>([
      [tokenUserToken, { name: "token-user", groups: ["system:authenticated"] }],
      [viewerToken, { name: "viewer", groups: ["system:authenticated"] }],
    ]);
    const rbac: Map<string, RbacRule[]> = defaultRbac();
    const kubeApi = await startKubeApiServer({
      api,
      tokens,
      tls: { certPem: serving.certPem, keyPem: serving.keyPem, clientCaPem: clusterCa.rootCertPem },
      staticTokens,
      rbac,
      listen: options.listen,
      onRequest: (entry) => {
        logger.debug("kube-api", { method: entry.method, path: entry.path, status: entry.status });
      },
    });
    closers.push(() => kubeApi.close());

    const context: DevPlaneContext = {
      store,
      api,
      meshCa,
      clusterCa,
      tokens,
      listenHosts: options.listen.map((l) => l.host),
      ports: options.ports ?? new Map(),
      profile: options.profile,
      trustDomain: options.trustDomain,
      serviceCidrs: options.serviceCidrs,
      logger,
    };
    const services: StartedDevService[] = [];
    for (const service of options.services) {
      const started = await service.start(context);
      services.push(started);
      closers.push(() => started.close());
    }
    const credentials: DevCredentials = {
      adminCertPem: admin.certPem,
      adminKeyPem: admin.keyPem,
      tokenUserToken,
      viewerToken,
    };
    const server = clientUrl(kubeApi.urls[0] ?? "");
    return {
      context,
      kubeApi,
      services,
      credentials,
      kubeconfig: () => renderDevKubeconfig({ server, caPem: clusterCa.rootCertPem, credentials }),
      close: closeAll,
    };
  } catch (error) {
    await closeAll();
    throw error;
  }
}

export function renderDevKubeconfig(options: { server: string; caPem: string; credentials: DevCredentials }): string {
  const b64 = (text: string): string => Buffer.from(text).toString("base64");
  const context = (name: string, user: string): unknown => ({
    name,
    context: { cluster: KUBECONFIG_CLUSTER, user, namespace: "default" },
  });
  return renderYaml(
    {
      apiVersion: "v1",
      kind: "Config",
      clusters: [
        {
          name: KUBECONFIG_CLUSTER,
          cluster: { server: options.server, "certificate-authority-data": b64(options.caPem) },
        },
      ],
      users: [
        {
          name: "admin",
          user: {
            "client-certificate-data": b64(options.credentials.adminCertPem),
            "client-key-data": b64(options.credentials.adminKeyPem),
          },
        },
        { name: "token-user", user: { token: options.credentials.tokenUserToken } },
        { name: "viewer", user: { token: options.credentials.viewerToken } },
      ],
      contexts: [
        context(KUBECONFIG_CONTEXTS.admin, "admin"),
        context(KUBECONFIG_CONTEXTS.token, "token-user"),
        context(KUBECONFIG_CONTEXTS.viewer, "viewer"),
      ],
      "current-context": KUBECONFIG_CONTEXTS.admin,
      preferences: {},
    },
    [" Written by `istio-vm dev`: a local test double of a Kubernetes API, not a real cluster."],
  );
}
