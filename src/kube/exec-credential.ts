/**
 * Exec credential plugins (client.authentication.k8s.io v1 and v1beta1), how GKE (gke-gcloud-auth-plugin), EKS
 * (aws eks get-token) and AKS (kubelogin) authenticate: run the configured command with its args and env plus
 * KUBERNETES_EXEC_INFO, read an ExecCredential from its stdout, use `status.token` or
 * `status.clientCertificateData`+`clientKeyData`, and cache the result until `status.expirationTimestamp`.
 * `invalidate()` drops the cache (the client calls it after a 401 and retries once, as client-go does).
 */
import { AgentError } from "../platform/errors.js";
import type { ProcessRunner } from "../platform/process.js";
import type { ClusterEntry, ExecConfig } from "./kubeconfig.js";

export const EXEC_API_VERSIONS = ["client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"] as const;
const EXEC_TIMEOUT_MS = 120_000;

export interface ExecCredentialStatus {
  readonly token?: string;
  readonly clientCertificateData?: string;
  readonly clientKeyData?: string;
  /** Milliseconds since the epoch; absent means "valid until the server says otherwise". */
  readonly expiresAt?: number;
}

export interface ExecCredentialOptions {
  readonly exec: ExecConfig;
  readonly cluster: ClusterEntry;
  /** The CA bundle as PEM, passed to the plugin when provideClusterInfo is set. */
  readonly caPem?: string;
  readonly env: NodeJS.ProcessEnv;
  readonly runner: ProcessRunner;
  readonly now?: () => number;
  /** The user's name in the kubeconfig, for messages. */
  readonly userName: string;
}

function execError(options: ExecCredentialOptions, message: string, hint?: string): AgentError {
  const fallback = `run \`${options.exec.command}\` yourself to see why; the plugin is configured under users[name=${options.userName}].user.exec in the kubeconfig`;
  return new AgentError({
    code: "KUBE_EXEC_CREDENTIAL",
    message: `exec credential plugin ${options.exec.command} for user "${options.userName}": ${message}`,
    subject: options.exec.command,
    hint: hint ?? options.exec.installHint?.trim() ?? fallback,
  });
}

/** The KUBERNETES_EXEC_INFO value the plugin reads. */
export function execInfo(options: Pick<ExecCredentialOptions, "exec" | "cluster" | "caPem">): string {
  const spec: Record<string, unknown> = { interactive: false };
  if (options.exec.provideClusterInfo) {
    const cluster: Record<string, unknown> = { server: options.cluster.server };
    if (options.cluster.tlsServerName !== undefined) cluster["tls-server-name"] = options.cluster.tlsServerName;
    if (options.cluster.insecureSkipTlsVerify) cluster["insecure-skip-tls-verify"] = true;
    if (options.caPem !== undefined) {
      cluster["certificate-authority-data"] = Buffer.from(options.caPem).toString("base64");
    }
    if (options.cluster.proxyUrl !== undefined) cluster["proxy-url"] = options.cluster.proxyUrl;
    spec["cluster"] = cluster;
  }
  return JSON.stringify({ kind: "ExecCredential", apiVersion: options.exec.apiVersion, spec });
}

/** Parses and checks a plugin's stdout. */
export function parseExecCredential(stdout: string, options: ExecCredentialOptions): ExecCredentialStatus {
  let doc: unknown;
  try {
    doc = JSON.parse(stdout);
  } catch {
    throw execError(options, `printed something that is not an ExecCredential JSON object: ${stdout.slice(0, 200)}`);
  }
  const root = doc as { kind?: unknown; apiVersion?: unknown; status?: Record<string, unknown> } | null;
  if (root === null || typeof root !== "object" || root.kind !== "ExecCredential") {
    throw execError(options, `printed JSON that is not an ExecCredential (kind: ${String(root?.kind)})`);
  }
  if (root.apiVersion !== options.exec.apiVersion) {
    throw execError(
      options,
      `returned apiVersion ${String(root.apiVersion)}, but the kubeconfig asked for ${options.exec.apiVersion}`,
      "make users[].user.exec.apiVersion match what the plugin prints",
    );
  }
  const status = root.status ?? {};
  const text = (key: string): string | undefined => {
    const v = status[key];
    return typeof v === "string" && v !== "" ? v : undefined;
  };
  const token = text("token");
  const cert = text("clientCertificateData");
  const key = text("clientKeyData");
  if ((cert === undefined) !== (key === undefined)) {
    throw execError(options, "returned only one of clientCertificateData and clientKeyData; both are needed");
  }
  if (token === undefined && cert === undefined) {
    throw execError(options, "returned neither status.token nor status.clientCertificateData/clientKeyData");
  }
  const expiry = text("expirationTimestamp");
  const expiresAt = expiry === undefined ? undefined : Date.parse(expiry);
  if (expiresAt !== undefined && Number.isNaN(expiresAt)) {
    throw execError(options, `returned an invalid expirationTimestamp ${String(expiry)}`);
  }
  return {
    ...(token === undefined ? {} : { token }),
    ...(cert === undefined || key === undefined ? {} : { clientCertificateData: cert, clientKeyData: key }),
    ...(expiresAt === undefined ? {} : { expiresAt }),
  };
}

export class ExecCredentialSource {
  readonly #options: ExecCredentialOptions;
  #cached: ExecCredentialStatus | undefined;
  #pending: Promise<ExecCredentialStatus> | undefined;
  /** How many times the plugin ran (tests and benchmarks check the cache with it). */
  runs = 0;

  constructor(options: ExecCredentialOptions) {
    if (!(EXEC_API_VERSIONS as readonly string[]).includes(options.exec.apiVersion)) {
      throw execError(
        options,
        options.exec.apiVersion === ""
          ? "has no apiVersion"
          : `uses apiVersion ${options.exec.apiVersion}, which is not supported`,
        `set users[].user.exec.apiVersion to ${EXEC_API_VERSIONS.join(" or ")} (v1alpha1 was removed in Kubernetes 1.24)`,
      );
    }
    if (options.exec.interactiveMode === "Always") {
      throw execError(
        options,
        "needs an interactive terminal (interactiveMode: Always), and istio-vm runs plugins non-interactively",
        "log in with the plugin first (so it can answer from its cache) or set interactiveMode: IfAvailable",
      );
    }
    this.#options = options;
  }

  /** The current credential, running the plugin when there is none or it has expired. */
  async get(): Promise<ExecCredentialStatus> {
    const now = (this.#options.now ?? Date.now)();
    const cached = this.#cached;
    if (cached !== undefined && (cached.expiresAt === undefined || cached.expiresAt > now)) return cached;
    this.#pending ??= this.#run().finally(() => {
      this.#pending = undefined;
    });
    return this.#pending;
  }

  invalidate(): void {
    this.#cached = undefined;
  }

  async #run(): Promise<ExecCredentialStatus> {
    const { exec, env, runner } = this.#options;
    const childEnv: NodeJS.ProcessEnv = { ...env };
    for (const { name, value } of exec.env) childEnv[name] = value;
    childEnv["KUBERNETES_EXEC_INFO"] = execInfo(this.#options);
    this.runs++;
    let result;
    try {
      result = await runner.run(exec.command, exec.args, { env: childEnv, timeoutMs: EXEC_TIMEOUT_MS });
    } catch (error) {
      if (error instanceof AgentError && error.code === "COMMAND_NOT_FOUND") {
        throw execError(
          this.#options,
          "the command was not found",
          exec.installHint?.trim() ?? `install ${exec.command} or fix users[].user.exec.command in the kubeconfig`,
        );
      }
      throw error;
    }
    if (result.timedOut) throw execError(this.#options, `did not finish within ${EXEC_TIMEOUT_MS / 1000} s`);
    if (result.code !== 0) {
      const stderr = result.stderr.trim().split("\n").slice(-5).join("\n");
      throw execError(
        this.#options,
        `exited with ${result.code === null ? `signal ${String(result.signal)}` : `status ${result.code}`}${stderr === "" ? "" : `: ${stderr}`}`,
      );
    }
    const status = parseExecCredential(result.stdout, this.#options);
    this.#cached = status;
    return status;
  }
}
