/** SPIFFE identities of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`. */

export interface WorkloadIdentity {
  readonly trustDomain: string;
  readonly namespace: string;
  readonly serviceAccount: string;
}

export function spiffeUri(identity: WorkloadIdentity): string {
  return `spiffe://${identity.trustDomain}/ns/${identity.namespace}/sa/${identity.serviceAccount}`;
}

const SPIFFE = /^spiffe:\/\/([^/]+)\/ns\/([^/]+)\/sa\/([^/]+)$/;

/** Parses a workload SPIFFE URI; undefined when it is not of the Istio form. */
export function parseSpiffeUri(uri: string): WorkloadIdentity | undefined {
  const m = SPIFFE.exec(uri);
  if (m === null) return undefined;
  return { trustDomain: m[1] ?? "", namespace: m[2] ?? "", serviceAccount: m[3] ?? "" };
}
