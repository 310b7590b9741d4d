/**
 * The real KubeClient: JSON over node:https (node:http for plain-HTTP servers such as `kubectl proxy`), with the
 * kubeconfig's CA bundle, client certificate, bearer token or exec plugin, and `AbortSignal.timeout` on every call.
 * No HTTP(S)_PROXY is ever consulted: control-plane requests go straight to the server named in the kubeconfig.
 *
 * Every failure becomes an error a user can act on (api-errors.ts).
 */
import http from "node:http";
import https from "node:https";
import type { Socket } from "node:net";
import { isIP } from "node:net";
import tls from "node:tls";
import { AgentError } from "../platform/errors.js";
import { statusError, transportError } from "./api-errors.js";
import type { KubeClient, KubeObjectList, RequestOptions } from "./client.js";

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
