/** Builds the renewal context from the VM's configuration: shared by the agent's loop and `istio-vm certs`. */
import type { LoadedConfig } from "../config/load.js";
import type { ConfigValues } from "../config/registry.js";
import type { SystemPorts } from "../platform/ports.js";
import { caServerName, createCaClient, keptCaConnection } from "./ca-client.js";
import { spiffeUri } from "./identity.js";
import type { RenewContext } from "./renew.js";
import type { RenewalPolicy } from "./schedule.js";
import { CertStore, resolveCertOwner } from "./store.js";

/** The ports the store and the CA client use; `uid` decides whether files are chowned to ENVOY_USER (root only). */
export type CertSetupDeps = Pick<SystemPorts, "fs" | "links" | "users" | "clock" | "uid">;

export function workloadIdentity(config: ConfigValues): string {
  return spiffeUri({
    trustDomain: config.TRUST_DOMAIN,
    namespace: config.POD_NAMESPACE,
    serviceAccount: config.SERVICE_ACCOUNT,
  });
}

export function renewalPolicy(config: ConfigValues): RenewalPolicy {
  return { graceRatio: config.SECRET_GRACE_PERIOD_RATIO, graceJitter: config.SECRET_GRACE_PERIOD_RATIO_JITTER };
}

/** What the admin does when a VM cannot renew by itself any more. */
export function reprovisionHint(config: ConfigValues): string {
  return (
    `on the admin host run \`istio-vm certs ${config.SERVICE_ACCOUNT} ${config.POD_NAMESPACE} --all\`, ` +
    "copy the files to this VM and run `istio-vm install`"
  );
}

export async function createRenewContext(loaded: LoadedConfig, deps: CertSetupDeps): Promise<RenewContext> {
  const config = loaded.values;
  const owner = await resolveCertOwner(config.ENVOY_USER, deps);
  const store = new CertStore({
    dir: config.OUTPUT_CERTS,
    fs: deps.fs,
    links: deps.links,
    ...(owner === undefined ? {} : { owner }),
  });
  const serverName = caServerName(config.CA_ADDR, {
    value: config.ISTIOD_SAN,
    explicit: loaded.variables.ISTIOD_SAN.source.kind !== "default",
  });
  const protocol = config.ISTIO_CONTROL_PLANE;
  const ca = keptCaConnection((rootPem) =>
    createCaClient(protocol, {
      address: config.CA_ADDR,
      serverName,
      rootPem,
      timeoutMs: config.CA_CALL_TIMEOUT,
      clusterId: config.ISTIO_META_CLUSTER_ID,
      now: () => deps.clock.now(),
    }),
  );
  return {
    store,
    protocol,
    connect: (rootPem) => ca.connect(rootPem),
    close: () => {
      ca.close();
    },
    clock: deps.clock,
    fs: deps.fs,
    identity: workloadIdentity(config),
    keySpec: { type: config.ISTIO_CERT_KEY_TYPE, rsaBits: Number(config.WORKLOAD_RSA_KEY_SIZE) },
    ttlMs: config.SECRET_TTL,
    tokenFile: config.ISTIO_TOKEN_FILE,
  };
}
