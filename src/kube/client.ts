/**
 * The Kubernetes API as the admin commands see it: a few REST verbs on API paths, returning plain JSON. The real
 * implementation (kubeconfig, TLS, client certificates, tokens, exec credential plugins) lives beside this file;
 * tests may pass a fake that implements the same interface.
 */
import { AgentError } from "../platform/errors.js";

export interface KubeObjectList<T> {
  readonly items: T[];
  readonly metadata?: { readonly resourceVersion?: string };
}

export interface RequestOptions {
  /** `dryRun=All`: the API server validates and answers without persisting. */
  readonly dryRun?: boolean;
  readonly signal?: AbortSignal;
}

export interface KubeClient {
  /** The namespace of the current context (or -n), used when a command names none. */
  readonly namespace: string;
  /** The API server URL, for messages. */
  readonly server: string;
  get<T>(path: string, options?: RequestOptions): Promise<T>;
  list<T>(path: string, options?: RequestOptions): Promise<KubeObjectList<T>>;
  create<T>(path: string, body: unknown, options?: RequestOptions): Promise<T>;
  update<T>(path: string, body: unknown, options?: RequestOptions): Promise<T>;
  delete(path: string, options?: RequestOptions): Promise<void>;
}

/**
 * An API error a user can act on: the HTTP status, the Kubernetes `reason` (NotFound, Forbidden, Conflict, …) and
 * the verb and resource involved, so a 403 can say exactly what to grant.
 */
export class KubeApiError extends AgentError {
  readonly status: number;
  readonly reason: string;

  constructor(options: {
    status: number;
    reason: string;
    message: string;
    subject: string;
    hint?: string;
    cause?: unknown;
  }) {
    super({
      code: `KUBE_${options.reason.replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase() || "ERROR"}`,
      message: options.message,
      subject: options.subject,
      ...(options.hint === undefined ? {} : { hint: options.hint }),
      cause: options.cause,
    });
    this.name = "KubeApiError";
    this.status = options.status;
    this.reason = options.reason;
  }
}

export function isNotFound(error: unknown): boolean {
  return error instanceof KubeApiError && error.status === 404;
}

export function isConflict(error: unknown): boolean {
  return error instanceof KubeApiError && error.status === 409 && error.reason === "Conflict";
}

export function isAlreadyExists(error: unknown): boolean {
  return error instanceof KubeApiError && error.status === 409 && error.reason === "AlreadyExists";
}
