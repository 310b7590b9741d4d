/**
 * The real KubeClient: JSON over node:https (node:http for plain-HTTP servers such as `kubectl proxy`), with the
 * kubeconfig's CA bundle, client certificate, bearer token or exec plugin, and `AbortSignal.timeout` on every call.
 * No HTTP(S)_PROXY is ever consulted: control-plane requests go straight to the server named in the kubeconfig.
 *
 * Every failure becomes an error a user can act on: unreachable (names the address), TLS (names the server and the
 * reason), 401 (credentials), 403 (the verb, resource and namespace to be granted), 404 (the object), 409, 422 (the
 * API server's own message, verbatim: callers parse it, e.g. the Service CIDR from a rejected clusterIP).
 */
import http from "node:http";
import https from "node:https";
import type { Socket } from "node:net";
import { isIP } from "node:net";
import tls from "node:tls";
import { AgentError } from "../platform/errors.js";
import type { ApiPath } from "./api-path.js";
import { parseApiPath } from "./api-path.js";
import type { KubeClient, KubeObjectList, RequestOptions } from "./client.js";
import { KubeApiError } from "./client.js";

export const DEFAULT_KUBE_TIMEOUT_MS = 30_000;

/** What authenticates one request: an Authorization header and/or a client certificate. */
export interface RequestCredentials {
  readonly authorization?: string;
  readonly certPem?: string;
  readonly keyPem?: string;
}

export interface CredentialProvider {
  get(): Promise<RequestCredentials>;
  /**
   * Called after a 401. Returns true when fresh credentials may succeed (an exec plugin can be re-run, a token file
   * re-read); the request is then retried once.
   */
  invalidate(): boolean;
}

export const anonymous: CredentialProvider = { get: () => Promise.resolve({}), invalidate: () => false };

export interface HttpKubeClientOptions {
  readonly server: string;
  readonly namespace: string;
  /** PEM bundle that must have signed the server's certificate; the system roots when absent. */
  readonly caPem?: string;
  readonly insecureSkipTlsVerify?: boolean;
  readonly tlsServerName?: string;
  /** The kubeconfig's proxy-url: an http:// proxy that tunnels with CONNECT. */
  readonly proxyUrl?: string;
  readonly credentials?: CredentialProvider;
  readonly timeoutMs?: number;
  /** Context and user names, for messages. */
  readonly contextName?: string;
  readonly userName?: string;
}

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

export class HttpKubeClient implements KubeClient {
  readonly namespace: string;
  readonly server: string;
  readonly #options: HttpKubeClientOptions;
  readonly #agents = new Map<string, https.Agent | http.Agent>();
  readonly #url: URL;
  /** Requests sent (each retry counts), for benchmarks. */
  requests = 0;

  constructor(options: HttpKubeClientOptions) {
    let url: URL;
    try {
      url = new URL(options.server);
    } catch {
      throw new AgentError({
        code: "KUBECONFIG_INVALID",
        message: `the cluster server "${options.server}" is not a URL`,
        subject: options.server,
        hint: "set clusters[].cluster.server to e.g. https://203.0.113.10:6443",
        kind: "config",
      });
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      throw new AgentError({
        code: "KUBECONFIG_INVALID",
        message: `the cluster server ${options.server} must be an https:// (or http://) URL`,
        subject: options.server,
        kind: "config",
      });
    }
    if (options.proxyUrl !== undefined) {
      let proxy: URL | undefined;
      try {
        proxy = new URL(options.proxyUrl);
      } catch {
        proxy = undefined;
      }
      if (proxy?.protocol !== "http:") {
        throw new AgentError({
          code: "KUBECONFIG_INVALID",
          message: `proxy-url ${options.proxyUrl} is not supported: istio-vm tunnels through http:// proxies only (no https:// or socks5://)`,
          subject: options.proxyUrl,
          hint: "use an HTTP CONNECT proxy, or remove proxy-url when the server is directly reachable",
          kind: "config",
        });
      }
    }
    this.#url = url;
    this.server = options.server.replace(/\/+$/, "");
    this.namespace = options.namespace;
    this.#options = options;
  }

  #agent(credentials: RequestCredentials): https.Agent | http.Agent {
    const key = `${credentials.certPem ?? ""}\u0000${credentials.keyPem ?? ""}`;
    let agent = this.#agents.get(key);
    if (agent === undefined) {
      // keepAlive: a command makes several requests; idle sockets are unref'd, so they never hold the process open.
      agent =
        this.#url.protocol === "http:"
          ? new http.Agent({ keepAlive: true })
          : new https.Agent({
              keepAlive: true,
              ...(this.#options.caPem === undefined ? {} : { ca: this.#options.caPem }),
              ...(credentials.certPem === undefined ? {} : { cert: credentials.certPem }),
              ...(credentials.keyPem === undefined ? {} : { key: credentials.keyPem }),
              rejectUnauthorized: this.#options.insecureSkipTlsVerify !== true,
              ...(this.#options.tlsServerName === undefined ? {} : { servername: this.#options.tlsServerName }),
            });
      this.#agents.set(key, agent);
    }
    return agent;
  }

  /** Closes idle keep-alive connections. */
  close(): void {
    for (const agent of this.#agents.values()) agent.destroy();
    this.#agents.clear();
  }

  async #send(
    method: string,
    path: string,
    body: unknown,
    options: RequestOptions | undefined,
  ): Promise<{ status: number; text: string }> {
    const url = new URL(this.server + (path.startsWith("/") ? path : `/${path}`));
    if (options?.dryRun === true) url.searchParams.set("dryRun", "All");
    const payload = body === undefined ? undefined : JSON.stringify(body);
    let retried = false;
    const provider = this.#options.credentials ?? anonymous;
    for (;;) {
      const credentials = await provider.get();
      const result = await this.#once(method, url, payload, credentials, options?.signal);
      if (result.status === 401 && !retried && provider.invalidate()) {
        retried = true;
        continue;
      }
      return result;
    }
  }

  #once(
    method: string,
    url: URL,
    payload: string | undefined,
    credentials: RequestCredentials,
    signal: AbortSignal | undefined,
  ): Promise<{ status: number; text: string }> {
    this.requests++;
    const timeout = AbortSignal.timeout(this.#options.timeoutMs ?? DEFAULT_KUBE_TIMEOUT_MS);
    const combined = signal === undefined ? timeout : AbortSignal.any([timeout, signal]);
    const headers: Record<string, string> = { accept: "application/json", "user-agent": "istio-vm" };
    if (credentials.authorization !== undefined) headers["authorization"] = credentials.authorization;
    if (payload !== undefined) {
      headers["content-type"] = "application/json";
      headers["content-length"] = String(Buffer.byteLength(payload));
    }
    const transport = url.protocol === "http:" ? http : https;
    const tunnel =
      this.#options.proxyUrl === undefined || url.protocol !== "https:" ? undefined : this.#tunnel(url, combined);
    return new Promise((resolve, reject) => {
      const fail = (error: unknown): void => {
        if (signal?.aborted === true && !timeout.aborted) {
          reject(signal.reason as Error);
          return;
        }
        reject(error instanceof AgentError ? error : transportError(error, this.server, timeout.aborted));
      };
      const connection =
        tunnel === undefined
          ? Promise.resolve({ agent: this.#agent(credentials) })
          : tunnel.then((socket) => ({
              // No agent at all: with `agent: false` Node would make a fresh agent and ignore createConnection.
              createConnection: () =>
                tls.connect({
                  socket,
                  host: url.hostname,
                  ...(this.#options.tlsServerName !== undefined
                    ? { servername: this.#options.tlsServerName }
                    : isIP(url.hostname) === 0
                      ? { servername: url.hostname }
                      : {}),
                  ...(this.#options.caPem === undefined ? {} : { ca: this.#options.caPem }),
                  ...(credentials.certPem === undefined ? {} : { cert: credentials.certPem }),
                  ...(credentials.keyPem === undefined ? {} : { key: credentials.keyPem }),
                  rejectUnauthorized: this.#options.insecureSkipTlsVerify !== true,
                }),
            }));
      connection.then((via) => {
        const request = transport.request(url, { method, headers, signal: combined, ...via }, (response) => {
          const chunks: Buffer[] = [];
          response.on("data", (chunk: Buffer) => chunks.push(chunk));
          response.on("end", () => {
            resolve({ status: response.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") });
          });
          response.on("error", (error) => {
            reject(transportError(error, this.server, timeout.aborted));
          });
        });
        request.on("error", fail);
        request.end(payload);
      }, fail);
    });
  }

  /** Opens a CONNECT tunnel to the API server through the kubeconfig's proxy-url. */
  #tunnel(url: URL, signal: AbortSignal): Promise<Socket> {
    const proxy = new URL(this.#options.proxyUrl ?? "");
    const target = `${url.hostname.includes(":") ? `[${url.hostname}]` : url.hostname}:${url.port === "" ? "443" : url.port}`;
    const headers: Record<string, string> = { host: target };
    if (proxy.username !== "") {
      const userPass = `${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`;
      headers["proxy-authorization"] = `Basic ${Buffer.from(userPass).toString("base64")}`;
    }
    return new Promise((resolve, reject) => {
      const request = http.request({
        host: proxy.hostname.replace(/^\[|\]$/g, ""),
        port: proxy.port === "" ? 80 : Number(proxy.port),
        method: "CONNECT",
        path: target,
        headers,
        agent: false,
        signal,
      });
      request.on("connect", (response, socket) => {
        if (response.statusCode === 200) {
          resolve(socket);
          return;
        }
        socket.destroy();
        reject(
          new AgentError({
            code: "KUBE_PROXY",
            message:
              `the proxy ${proxy.host} (proxy-url) refused to tunnel to ${target}: ${response.statusCode ?? 0} ${response.statusMessage ?? ""}`.trimEnd(),
            subject: proxy.host,
            hint: "check proxy-url in the kubeconfig and whether the proxy allows CONNECT to the API server (and its credentials)",
          }),
        );
      });
      request.on("error", reject);
      request.end();
    });
  }

  async #json<T>(method: string, path: string, body: unknown, options: RequestOptions | undefined): Promise<T> {
    const { status, text } = await this.#send(method, path, body, options);
    if (status < 200 || status >= 300) {
      throw statusError({
        method,
        path,
        status,
        body: text,
        server: this.server,
        contextName: this.#options.contextName,
        userName: this.#options.userName,
      });
    }
    if (text === "") return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch (error) {
      throw new AgentError({
        code: "KUBE_BAD_RESPONSE",
        message: `the Kubernetes API server ${this.server} answered ${method} ${path} with something that is not JSON`,
        subject: this.server,
        hint: "is the server URL in the kubeconfig really a Kubernetes API server?",
        cause: error,
      });
    }
  }

  get<T>(path: string, options?: RequestOptions): Promise<T> {
    return this.#json<T>("GET", path, undefined, options);
  }

  list<T>(path: string, options?: RequestOptions): Promise<KubeObjectList<T>> {
    return this.#json<KubeObjectList<T>>("GET", path, undefined, options);
  }

  create<T>(path: string, body: unknown, options?: RequestOptions): Promise<T> {
    return this.#json<T>("POST", path, body, options);
  }

  update<T>(path: string, body: unknown, options?: RequestOptions): Promise<T> {
    return this.#json<T>("PUT", path, body, options);
  }

  async delete(path: string, options?: RequestOptions): Promise<void> {
    await this.#json<unknown>("DELETE", path, undefined, options);
  }
}
