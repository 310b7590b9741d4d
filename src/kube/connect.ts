/**
 * `createKubeClient`: kubeconfig → a ready KubeClient (what every admin command calls). Reads the kubeconfig with
 * kubectl's rules, picks the context, loads the CA bundle and client certificate, and sets up the bearer token,
 * token file, basic auth or exec credential plugin. Files are read now, so a missing certificate file is reported
 * before any request; exec plugins run on the first request (and again after a 401).
 */
import { AgentError } from "../platform/errors.js";
import type { FileSystem } from "../platform/fs.js";
import type { Logger } from "../platform/logger.js";
import type { ProcessRunner } from "../platform/process.js";
import { ExecCredentialSource } from "./exec-credential.js";
import type { CredentialProvider, RequestCredentials } from "./http-client.js";
import { HttpKubeClient } from "./http-client.js";
import type { ResolvedContext } from "./kubeconfig.js";
import { loadKubeconfig, resolveContext } from "./kubeconfig.js";

export interface CreateKubeClientOptions {
  readonly kubeconfig?: string | undefined;
  readonly context?: string | undefined;
  readonly namespace?: string | undefined;
  readonly env: NodeJS.ProcessEnv;
  readonly fs: FileSystem;
  readonly runner: ProcessRunner;
  /** Receives the insecure-skip-tls-verify warning and debug lines. */
  readonly logger?: Logger;
  readonly timeoutMs?: number;
  readonly now?: () => number;
  readonly cwd?: string;
}

async function readReferenced(fs: FileSystem, path: string, field: string, context: ResolvedContext): Promise<string> {
  const text = await fs.readTextIfExists(path);
  if (text === undefined) {
    throw new AgentError({
      code: "KUBECONFIG_FILE_MISSING",
      message: `${field} file ${path} (context "${context.contextName}") does not exist`,
      subject: path,
      hint: `fix ${field} in the kubeconfig (relative paths are relative to the kubeconfig file), or use the ${field}-data form`,
      kind: "config",
    });
  }
  return text;
}

function decodeData(data: string, field: string, context: ResolvedContext): string {
  const text = Buffer.from(data, "base64").toString("utf8");
  if (!text.includes("-----BEGIN")) {
    throw new AgentError({
      code: "KUBECONFIG_INVALID",
      message: `${field}-data of context "${context.contextName}" is not base64-encoded PEM`,
      subject: context.files.join(":"),
      hint: `${field}-data holds the PEM file's content, base64-encoded (\`base64 -w0 FILE\`)`,
      kind: "config",
    });
  }
  return text;
}

/** The credential provider for the selected user: static material, a token file, or an exec plugin. */
/** A PEM a kubeconfig gives as `<field>-data` (inline, base64) or `<field>` (a file); `-data` wins, as in kubectl. */
async function pemFrom(
  fs: FileSystem,
  source: { readonly data: string | undefined; readonly path: string | undefined },
  field: string,
  context: ResolvedContext,
): Promise<string | undefined> {
  if (source.data !== undefined) return decodeData(source.data, field, context);
  return source.path === undefined ? undefined : readReferenced(fs, source.path, field, context);
}

async function credentialsFor(
  context: ResolvedContext,
  options: CreateKubeClientOptions,
  caPem: string | undefined,
): Promise<CredentialProvider> {
  const { user } = context;
  if (user.authProvider !== undefined) {
    throw new AgentError({
      code: "KUBE_AUTH_PROVIDER_UNSUPPORTED",
      message: `user "${context.userName}" uses the removed auth-provider "${user.authProvider}"`,
      subject: context.userFile,
      hint:
        "Kubernetes 1.26 removed in-tree auth providers: switch to the exec plugin (GKE: gke-gcloud-auth-plugin, " +
        "AKS: kubelogin convert-kubeconfig), then `gcloud container clusters get-credentials` or `az aks get-credentials` again",
      kind: "config",
    });
  }
  let certPem = await pemFrom(
    options.fs,
    { data: user.clientCertificateData, path: user.clientCertificate },
    "client-certificate",
    context,
  );
  let keyPem = await pemFrom(options.fs, { data: user.clientKeyData, path: user.clientKey }, "client-key", context);
  if ((certPem === undefined) !== (keyPem === undefined)) {
    throw new AgentError({
      code: "KUBECONFIG_INVALID",
      message: `user "${context.userName}" has a client ${certPem === undefined ? "key" : "certificate"} without the matching ${certPem === undefined ? "certificate" : "key"}`,
      subject: context.userFile,
      hint: "set both client-certificate(-data) and client-key(-data)",
      kind: "config",
    });
  }
  const base: RequestCredentials = {
    ...(certPem === undefined ? {} : { certPem }),
    ...(keyPem === undefined ? {} : { keyPem }),
  };
  if (user.exec !== undefined) {
    const source = new ExecCredentialSource({
      exec: user.exec,
      cluster: context.cluster,
      ...(caPem === undefined ? {} : { caPem }),
      env: options.env,
      runner: options.runner,
      userName: context.userName,
      ...(options.now === undefined ? {} : { now: options.now }),
    });
    const now = options.now ?? Date.now;
    let invalidatedAt: number | undefined;
    return {
      async get() {
        const status = await source.get();
        if (status.clientCertificateData !== undefined && status.clientKeyData !== undefined) {
          certPem = status.clientCertificateData;
          keyPem = status.clientKeyData;
        }
        return {
          ...base,
          ...(certPem === undefined ? {} : { certPem }),
          ...(keyPem === undefined ? {} : { keyPem }),
          ...(status.token === undefined ? {} : { authorization: `Bearer ${status.token}` }),
        };
      },
      invalidate() {
        // One re-run per 401 streak: a plugin that keeps returning rejected credentials must not loop.
        if (invalidatedAt !== undefined && now() - invalidatedAt < 10_000) return false;
        invalidatedAt = now();
        source.invalidate();
        return true;
      },
    };
  }
  if (user.tokenFile !== undefined && user.token === undefined) {
    const path = user.tokenFile;
    await readReferenced(options.fs, path, "tokenFile", context);
    return {
      // Token files are rotated in place (projected service-account tokens): read the current one for every request.
      get: async () => ({
        ...base,
        authorization: `Bearer ${(await readReferenced(options.fs, path, "tokenFile", context)).trim()}`,
      }),
      invalidate: () => false,
    };
  }
  let authorization: string | undefined;
  if (user.token !== undefined) authorization = `Bearer ${user.token}`;
  else if (user.username !== undefined) {
    authorization = `Basic ${Buffer.from(`${user.username}:${user.password ?? ""}`).toString("base64")}`;
  }
  const fixed: RequestCredentials = { ...base, ...(authorization === undefined ? {} : { authorization }) };
  return { get: () => Promise.resolve(fixed), invalidate: () => false };
}

/** The context a client would use, without connecting (for `--help` examples, messages and tests). */
export async function resolveKubeContext(options: CreateKubeClientOptions): Promise<ResolvedContext> {
  const config = await loadKubeconfig({
    kubeconfig: options.kubeconfig,
    env: options.env,
    fs: options.fs,
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
  });
  return resolveContext(config, { context: options.context, namespace: options.namespace });
}

export async function createKubeClient(options: CreateKubeClientOptions): Promise<HttpKubeClient> {
  const context = await resolveKubeContext(options);
  const { cluster } = context;
  const caPem = await pemFrom(
    options.fs,
    { data: cluster.certificateAuthorityData, path: cluster.certificateAuthority },
    "certificate-authority",
    context,
  );
  if (cluster.insecureSkipTlsVerify) {
    options.logger?.warn(
      `cluster "${context.clusterName}" sets insecure-skip-tls-verify: the API server's identity is not checked, so anyone on the network path can impersonate it`,
      { server: cluster.server },
    );
  }
  const credentials = await credentialsFor(context, options, caPem);
  options.logger?.debug("kubernetes API", {
    server: cluster.server,
    context: context.contextName,
    user: context.userName,
    namespace: context.namespace,
  });
  return new HttpKubeClient({
    server: cluster.server,
    namespace: context.namespace,
    ...(caPem === undefined ? {} : { caPem }),
    insecureSkipTlsVerify: cluster.insecureSkipTlsVerify,
    ...(cluster.tlsServerName === undefined ? {} : { tlsServerName: cluster.tlsServerName }),
    ...(cluster.proxyUrl === undefined ? {} : { proxyUrl: cluster.proxyUrl }),
    credentials,
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
    contextName: context.contextName,
    userName: context.userName,
  });
}
