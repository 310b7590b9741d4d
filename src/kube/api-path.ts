/**
 * Kubernetes API paths taken apart, the way kube-apiserver routes them (k8s.io/apiserver, pkg/endpoints/request,
 * RequestInfoFactory): `/api/<version>/...` for the core group, `/apis/<group>/<version>/...` otherwise, then
 * `[namespaces/<ns>/]<resource>[/<name>[/<subresource>]]`. `/api/v1/namespaces/<ns>` is the namespace object itself.
 * The one parser of the repository: the HTTPS client (for messages), the dev API server and the tests' fake client.
 */

export interface ApiPath {
  readonly group: string;
  readonly version: string;
  readonly namespace?: string;
  readonly resource?: string;
  readonly name?: string;
  readonly subresource?: string;
}

/** The path's parts (a query string is ignored), or undefined for a path that names no API group version. */
export function parseApiPath(path: string): ApiPath | undefined {
  const parts = (path.split("?")[0] ?? "")
    .split("/")
    .filter((p) => p !== "")
    .map(decodeURIComponent);
  let rest: string[];
  let group: string;
  let version: string;
  if (parts[0] === "api" && parts[1] !== undefined) {
    group = "";
    version = parts[1];
    rest = parts.slice(2);
  } else if (parts[0] === "apis" && parts[1] !== undefined && parts[2] !== undefined) {
    group = parts[1];
    version = parts[2];
    rest = parts.slice(3);
  } else {
    return undefined;
  }
  let namespace: string | undefined;
  if (rest[0] === "namespaces" && rest.length >= 3) {
    namespace = rest[1];
    rest = rest.slice(2);
  }
  const [resource, name, subresource, ...extra] = rest;
  // Deeper paths (a pod's proxy/<path>) are no object the repository reads or serves.
  if (extra.length > 0) return undefined;
  return {
    group,
    version,
    ...(namespace === undefined ? {} : { namespace }),
    ...(resource === undefined ? {} : { resource }),
    ...(name === undefined ? {} : { name }),
    ...(subresource === undefined ? {} : { subresource }),
  };
}
