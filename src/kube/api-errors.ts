/**
 * What the Kubernetes client reports when a request fails, so a user can act on it: unreachable (names the address),
 * TLS (names the server and the reason), 401 (credentials), 403 (the verb, resource and namespace to be granted),
 * 404 (the object), 409, 422 (the API server's own message, verbatim: callers parse it, e.g. the Service CIDR from a
 * rejected clusterIP). The tests' fake client reports through `statusError` too.
 */
import { AgentError } from "../platform/errors.js";
import type { ApiPath } from "./api-path.js";
import { parseApiPath } from "./api-path.js";
import { KubeApiError } from "./client.js";

/** The RBAC verb a request needs. */
export function rbacVerb(method: string, api: ApiPath | undefined): string {
  const named = api?.name !== undefined;
  switch (method) {
    case "GET":
      return named ? "get" : "list";
    case "POST":
      return "create";
    case "PUT":
      return "update";
    case "PATCH":
      return "patch";
    case "DELETE":
      return named ? "delete" : "deletecollection";
    default:
      return method.toLowerCase();
  }
}

function describeTarget(api: ApiPath | undefined, path: string): { resource: string; scope: string; object: string } {
  if (api?.resource === undefined) return { resource: path, scope: "", object: path };
  const resource =
    (api.subresource === undefined ? api.resource : `${api.resource}/${api.subresource}`) +
    (api.group === "" ? "" : `.${api.group}`);
  const scope = api.namespace === undefined ? "cluster-wide" : `in namespace "${api.namespace}"`;
  const object =
    api.name === undefined ? resource : `${api.resource}${api.group === "" ? "" : `.${api.group}`} "${api.name}"`;
  return { resource, scope, object };
}

interface KubeStatus {
  kind?: string;
  message?: string;
  reason?: string;
  code?: number;
  details?: { name?: string; kind?: string; group?: string };
}

const REASONS: Record<number, string> = {
  400: "BadRequest",
  401: "Unauthorized",
  403: "Forbidden",
  404: "NotFound",
  405: "MethodNotAllowed",
  409: "Conflict",
  410: "Gone",
  415: "UnsupportedMediaType",
  422: "Invalid",
  429: "TooManyRequests",
  500: "InternalError",
  503: "ServiceUnavailable",
  504: "Timeout",
};

/** Maps an API error response to a KubeApiError with a message and hint for the operator. */
export function statusError(options: {
  readonly method: string;
  readonly path: string;
  readonly status: number;
  readonly body: string;
  readonly server: string;
  readonly contextName?: string | undefined;
  readonly userName?: string | undefined;
}): KubeApiError {
  const { method, path, status, server } = options;
  let parsed: KubeStatus = {};
  try {
    const doc = JSON.parse(options.body) as unknown;
    if (doc !== null && typeof doc === "object") parsed = doc;
  } catch {
    parsed = { message: options.body.trim().slice(0, 300) };
  }
  const reason = parsed.reason ?? REASONS[status] ?? (status >= 500 ? "InternalError" : "Unknown");
  const serverMessage = parsed.message ?? `HTTP ${status}`;
  const api = parseApiPath(path);
  const verb = rbacVerb(method, api);
  const target = describeTarget(api, path);
  const context = options.contextName === undefined ? "" : ` (context "${options.contextName}")`;
  const user = options.userName === undefined || options.userName === "" ? "this user" : `user "${options.userName}"`;
  switch (status) {
    case 401:
      return new KubeApiError({
        status,
        reason: "Unauthorized",
        message: `the Kubernetes API server ${server} rejected the credentials of ${user}${context}: 401 Unauthorized`,
        subject: server,
        hint:
          "the token or client certificate is missing, invalid or expired: renew it (e.g. log in again with your cloud CLI), " +
          "check the users[] entry of the kubeconfig, and try `kubectl auth whoami`",
      });
    case 403: {
      const grant = `${verb} ${target.resource} ${target.scope}`.trim();
      return new KubeApiError({
        status,
        reason: "Forbidden",
        message: `the Kubernetes API server refused to let ${user}${context} ${grant}: ${serverMessage}`,
        subject: `${verb} ${target.resource}${api?.namespace === undefined ? "" : ` -n ${api.namespace}`}`,
        hint: `ask a cluster admin to grant ${grant} to ${user} (a Role or ClusterRole with verbs: [${verb}] on resources: [${target.resource.split(".")[0] ?? target.resource}], bound to the user), or use a context that has it`,
      });
    }
    case 404: {
      // A missing object carries details.name; a resource type the server does not have does not.
      const unserved =
        api?.name === undefined ||
        (parsed.details?.name === undefined && serverMessage.includes("could not find the requested resource"));
      const message = unserved
        ? `the API server ${server} does not serve ${target.resource} (${api === undefined ? path : `${api.group === "" ? "" : `${api.group}/`}${api.version}`}): ${serverMessage}`
        : `${target.object} not found${api.namespace === undefined ? "" : ` in namespace "${api.namespace}"`}`;
      return new KubeApiError({
        status,
        reason: "NotFound",
        message,
        subject:
          api?.name === undefined
            ? target.resource
            : `${target.object}${api.namespace === undefined ? "" : ` -n ${api.namespace}`}`,
        hint: unserved
          ? "the cluster does not have this API (an older Kubernetes or a missing CRD)"
          : "check the name and the namespace (-n); `kubectl get` lists what exists",
      });
    }
    case 409:
      return new KubeApiError({
        status,
        reason,
        message: serverMessage,
        subject: target.object,
        hint:
          reason === "AlreadyExists"
            ? "the object exists already: delete it first or update it instead"
            : "someone changed the object at the same time: read it again and retry",
      });
    default:
      return new KubeApiError({
        status,
        reason,
        message:
          status === 422 || status === 400
            ? serverMessage
            : `${verb} ${target.object}: ${status} ${reason}: ${serverMessage}`,
        subject: target.object,
        ...(status >= 500 ? { hint: "the API server had a problem; try again, and check the cluster's health" } : {}),
      });
  }
}

const TLS_ERROR = /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO_|HOSTNAME|ALTNAME|EPROTO|ERR_OSSL/;
const NETWORK_ERROR = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "ETIMEDOUT",
  "EPIPE",
  "EADDRNOTAVAIL",
]);

/** Maps a transport failure (no HTTP response) to an error naming the server. */
export function transportError(error: unknown, server: string, timedOut: boolean): AgentError {
  const err = error as NodeJS.ErrnoException;
  const code = typeof err.code === "string" ? err.code : "";
  if (timedOut) {
    return new AgentError({
      code: "KUBE_TIMEOUT",
      message: `the Kubernetes API server ${server} did not answer in time`,
      subject: server,
      hint: "check that the cluster is up and reachable from here (VPN, firewall), or raise the timeout",
      cause: error,
    });
  }
  if (TLS_ERROR.test(code) || TLS_ERROR.test(err.message)) {
    return new AgentError({
      code: "KUBE_TLS",
      message: `TLS handshake with the Kubernetes API server ${server} failed: ${err.message}${code === "" || err.message.includes(code) ? "" : ` (${code})`}`,
      subject: server,
      hint:
        "the server's certificate does not verify against the kubeconfig's certificate-authority(-data) (or its name does " +
        "not match the server address): fix certificate-authority-data for this cluster, or set tls-server-name",
      cause: error,
    });
  }
  return new AgentError({
    code: "KUBE_UNREACHABLE",
    message: `cannot reach the Kubernetes API server ${server}: ${err.message}`,
    subject: server,
    hint: NETWORK_ERROR.has(code)
      ? "check the server address in the kubeconfig, that the cluster is running, and that this machine can reach it (VPN, firewall)"
      : "check the server address in the kubeconfig and the network path to it",
    cause: error,
  });
}
