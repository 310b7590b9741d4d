/**
 * The mesh the tests against the dev istiod share: a mesh CA, istiod's serving pair, one workload's pair, and the
 * dev Pilot's ADS over TLS with them.
 */
import type { IssuedKeyPair, MeshCa } from "../../src/devplane/mesh-ca.js";
import { createMeshCa } from "../../src/devplane/mesh-ca.js";
import type { PilotXdsServer, StartPilotXdsOptions } from "../../src/devplane/pilot-xds.js";
import { startPilotXds } from "../../src/devplane/pilot-xds.js";
import { ObjectStore } from "../../src/devplane/store.js";

/** The name istiod's serving certificate carries (ISTIOD_SAN). */
export const ISTIOD_SAN = "istiod.istio-system.svc";

export interface MeshPairs {
  readonly ca: MeshCa;
  /** istiod's pair, for ISTIOD_SAN. */
  readonly serving: IssuedKeyPair;
  /** The VM's pair, for `spiffe://cluster.local/ns/<namespace>/sa/<serviceAccount>`. */
  readonly workload: IssuedKeyPair;
}

export async function meshPairs(namespace: string, serviceAccount: string): Promise<MeshPairs> {
  const ca = await createMeshCa();
  const serving = await ca.issueKeyPair({ dnsNames: [ISTIOD_SAN] });
  const workload = await ca.issueKeyPair({ identity: ca.spiffeId(namespace, serviceAccount) });
  return { ca, serving, workload };
}

/**
 * The dev Pilot serving `store` over TLS with istiod's pair; `requireClientCert` (default true) refuses clients
 * without a mesh certificate at the handshake.
 */
export function startTlsPilot(
  mesh: Pick<MeshPairs, "ca" | "serving">,
  store: ObjectStore,
  options: Omit<StartPilotXdsOptions, "store" | "tls"> & { readonly requireClientCert?: boolean } = {},
): Promise<PilotXdsServer> {
  const { requireClientCert = true, ...rest } = options;
  const { ca, serving } = mesh;
  return startPilotXds({
    ...rest,
    store,
    tls: { certPem: serving.chainPem, keyPem: serving.keyPem, caPem: ca.rootCertPem, requireClientCert },
  });
}

/** The workload's files where the agent reads them with ISTIO_VM_ROOT=/vm (OUTPUT_CERTS /vm/etc/certs). */
export function vmCertFiles(mesh: Pick<MeshPairs, "ca" | "workload">): Record<string, string> {
  return {
    "/vm/etc/certs/root-cert.pem": mesh.ca.rootCertPem,
    "/vm/etc/certs/cert-chain.pem": mesh.workload.chainPem,
    "/vm/etc/certs/key.pem": mesh.workload.keyPem,
  };
}

export interface TestService {
  readonly name: string;
  readonly namespace: string;
  readonly clusterIP: string;
  readonly ports: readonly { readonly name: string; readonly port: number }[];
}

/** A dev API store holding these Services (selector-less: no endpoints of their own). */
export function storeWithServices(...services: readonly TestService[]): ObjectStore {
  const store = new ObjectStore();
  for (const { name, namespace, clusterIP, ports } of services) {
    store.create("services", { metadata: { name, namespace }, spec: { clusterIP, ports } });
  }
  return store;
}

/** bookinfo's reviews Service, as the NDS and DNS tests look it up (reviews, reviews.bookinfo → 10.96.0.10). */
export const REVIEWS: TestService = {
  name: "reviews",
  namespace: "bookinfo",
  clusterIP: "10.96.0.10",
  ports: [{ name: "http", port: 9080 }],
};
