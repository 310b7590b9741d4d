/**
 * HTTP(S) requests as a port, over node:http(s) only: no proxy from the environment is ever used (a request meant for
 * the control plane must not go to HTTPS_PROXY), the CA bundle and client certificate are per call, and every call
 * has a deadline.
 */
import type * as Http from "node:http";
import type { IncomingHttpHeaders } from "node:http";
import type * as Https from "node:https";
import { timerDelay } from "./clock.js";
import { loadBuiltin } from "./fs.js";

export interface HttpRequest {
  readonly url: string;
  readonly method?: string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly body?: string | Uint8Array;
  /** Whole-request deadline (connect, send, receive). */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
  /** HTTPS: PEM bundle to trust instead of the system store. */
  readonly ca?: string | Buffer;
  /** HTTPS: client certificate chain and key (PEM). */
  readonly cert?: string | Buffer;
  readonly key?: string | Buffer;
  /** HTTPS: the name the server certificate must carry when it differs from the URL's host. */
  readonly servername?: string;
  /** HTTPS: accept any server certificate (application health probes, as Kubernetes and istio-agent probe). */
  readonly insecureSkipVerify?: boolean;
}

export interface HttpResponse {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
}

export interface HttpClient {
  request(request: HttpRequest): Promise<HttpResponse>;
}

/** The error a call fails with; `code` is the errno-style code (ECONNREFUSED, ETIMEDOUT, CERT_HAS_EXPIRED, …). */
export class HttpError extends Error {
  readonly code: string;
  constructor(code: string, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "HttpError";
    this.code = code;
  }
}

export const nodeHttpClient: HttpClient = {
  request(req) {
    return new Promise((resolve, reject) => {
      const url = new URL(req.url);
      const deadline = AbortSignal.timeout(timerDelay(req.timeoutMs));
      const signal = req.signal === undefined ? deadline : AbortSignal.any([deadline, req.signal]);
      const common = {
        method: req.method ?? "GET",
        headers: req.headers,
        signal,
        agent: false as const,
      };
      const onResponse = (res: import("node:http").IncomingMessage): void => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
        });
        res.on("error", onError);
      };
      const onError = (error: Error): void => {
        if (deadline.aborted) {
          reject(new HttpError("ETIMEDOUT", `no response from ${url.host} within ${req.timeoutMs} ms`, error));
          return;
        }
        const code = (error as NodeJS.ErrnoException).code;
        reject(new HttpError(typeof code === "string" ? code : "ERROR", error.message, error));
      };
      // Loaded on first use: node:https brings TLS, which a command that never makes a request must not pay for.
      const { request: httpRequest } = loadBuiltin("node:http") as typeof Http;
      const { request: httpsRequest } = loadBuiltin("node:https") as typeof Https;
      const client =
        url.protocol === "https:"
          ? httpsRequest(
              url,
              {
                ...common,
                ...(req.ca === undefined ? {} : { ca: req.ca }),
                ...(req.cert === undefined ? {} : { cert: req.cert }),
                ...(req.key === undefined ? {} : { key: req.key }),
                ...(req.servername === undefined ? {} : { servername: req.servername }),
                ...(req.insecureSkipVerify === true ? { rejectUnauthorized: false } : {}),
              },
              onResponse,
            )
          : httpRequest(url, common, onResponse);
      client.on("error", onError);
      client.end(req.body);
    });
  },
};
