/**
 * TokenRequest (POST .../serviceaccounts/<sa>/token): a signed service-account JWT with the requested audiences
 * (istio-ca by default) and lifetime (at least 10 minutes, at most 2^32 seconds), as kube-apiserver issues it.
 */
import type { ResourceDefinition } from "./kube-resources.js";
import type { Target } from "./kube-objects.js";
import { invalid, notFound, pathNotFound } from "./kube-status.js";
import type { ServiceAccountTokens } from "./sa-tokens.js";
import { DEFAULT_TOKEN_AUDIENCE } from "./sa-tokens.js";
import type { KubeObject, ObjectStore } from "./store.js";

const TOKEN_REQUESTS: ResourceDefinition = {
  group: "authentication.k8s.io",
  version: "v1",
  name: "tokenrequests",
  singular: "tokenrequest",
  kind: "TokenRequest",
  namespaced: true,
};

export function requestToken(
  context: { readonly store: ObjectStore; readonly tokens: ServiceAccountTokens },
  target: Target,
  body: unknown,
): KubeObject {
  if (target.def.name !== "serviceaccounts" || target.name === undefined) throw pathNotFound();
  const sa = context.store.tryGet("serviceaccounts", target.namespace, target.name);
  if (sa === undefined) throw notFound(target.def, target.name);
  const spec = (body as { spec?: { audiences?: unknown; expirationSeconds?: unknown } } | null)?.spec ?? {};
  const audiences =
    Array.isArray(spec.audiences) && spec.audiences.length > 0 ? spec.audiences.map(String) : [DEFAULT_TOKEN_AUDIENCE];
  const expirationSeconds = spec.expirationSeconds === undefined ? 3600 : Number(spec.expirationSeconds);
  if (!Number.isInteger(expirationSeconds) || expirationSeconds < 600) {
    throw invalid(TOKEN_REQUESTS, target.name, [
      {
        field: "spec.expirationSeconds",
        message: `Invalid value: ${String(spec.expirationSeconds)}: may not specify a duration less than 10 minutes`,
      },
    ]);
  }
  if (expirationSeconds > 2 ** 32) {
    throw invalid(TOKEN_REQUESTS, target.name, [
      {
        field: "spec.expirationSeconds",
        message: `Invalid value: ${expirationSeconds}: may not specify a duration larger than 2^32 seconds`,
      },
    ]);
  }
  const { token, expiresAt } = context.tokens.issue({
    namespace: target.namespace ?? "default",
    serviceAccount: target.name,
    ...(sa.metadata.uid === undefined ? {} : { uid: sa.metadata.uid }),
    audiences,
    expirationSeconds,
  });
  return {
    kind: "TokenRequest",
    apiVersion: "authentication.k8s.io/v1",
    metadata: {
      name: target.name,
      namespace: target.namespace ?? "default",
      creationTimestamp: null as unknown as string,
    },
    spec: { audiences, expirationSeconds, boundObjectRef: null },
    status: { token, expirationTimestamp: new Date(expiresAt).toISOString().replace(/\.\d+Z$/, "Z") },
  };
}
