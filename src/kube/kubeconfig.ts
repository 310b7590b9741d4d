/**
 * Kubeconfig loading and context selection with kubectl's rules:
 * - `--kubeconfig FILE` alone (it must exist); else every file in `KUBECONFIG` (`:`-separated, missing files and
 *   empty entries skipped, duplicates once); else `~/.kube/config`.
 * - Merging: a cluster, user or context name defined in several files is taken from the first file that defines it;
 *   `current-context` comes from the first file that sets one.
 * - `--context` overrides `current-context`; the namespace is `-n`, else the context's, else "default".
 * - Relative paths (certificate-authority, client-certificate, client-key, tokenFile, exec command with a `/`) are
 *   relative to the file that defined the entry.
 * Pure except for reading files through the FileSystem port.
 */
import { homedir } from "node:os";
import { dirname, isAbsolute, resolve } from "node:path";
import { AgentError } from "../platform/errors.js";
import type { FileSystem } from "../platform/fs.js";
import { readUserText } from "../platform/user-file.js";
import { YamlError, parseYaml } from "./kubeconfig-yaml.js";

export interface ExecConfig {
  readonly apiVersion: string;
  readonly command: string;
  readonly args: readonly string[];
  readonly env: readonly { readonly name: string; readonly value: string }[];
  readonly installHint?: string;
  readonly provideClusterInfo: boolean;
  readonly interactiveMode?: string;
}

export interface ClusterEntry {
  readonly server: string;
  readonly certificateAuthority?: string;
  readonly certificateAuthorityData?: string;
  readonly insecureSkipTlsVerify: boolean;
  readonly tlsServerName?: string;
  readonly proxyUrl?: string;
}

export interface UserEntry {
  readonly token?: string;
  readonly tokenFile?: string;
  readonly clientCertificate?: string;
  readonly clientCertificateData?: string;
  readonly clientKey?: string;
  readonly clientKeyData?: string;
  readonly username?: string;
  readonly password?: string;
  readonly exec?: ExecConfig;
  /** A deprecated in-tree auth provider (gcp, azure, oidc) that only kubectl's old plugins understood. */
  readonly authProvider?: string;
}

export interface ContextEntry {
  readonly cluster: string;
  readonly user: string;
  readonly namespace?: string;
}

/** An entry with the file it came from, so relative paths resolve against that file's directory. */
export interface Sourced<T> {
  readonly value: T;
  readonly file: string;
}

export interface Kubeconfig {
  /** The files read, in precedence order. */
  readonly files: readonly string[];
  readonly currentContext?: string;
  readonly clusters: ReadonlyMap<string, Sourced<ClusterEntry>>;
  readonly users: ReadonlyMap<string, Sourced<UserEntry>>;
  readonly contexts: ReadonlyMap<string, Sourced<ContextEntry>>;
}

export interface KubeconfigSelection {
  readonly kubeconfig?: string | undefined;
  readonly context?: string | undefined;
  readonly namespace?: string | undefined;
}

/** The selected context with every path made absolute. */
export interface ResolvedContext {
  readonly contextName: string;
  readonly clusterName: string;
  readonly userName: string;
  readonly namespace: string;
  readonly cluster: ClusterEntry;
  readonly user: UserEntry;
  /** The file that defined the user (exec commands with a relative path resolve against it). */
  readonly userFile: string;
  readonly files: readonly string[];
}

function configError(message: string, subject: string, hint: string, code = "KUBECONFIG_INVALID"): AgentError {
  return new AgentError({ code, message, subject, hint, kind: "config" });
}

type Obj = Record<string, unknown>;

function asObject(value: unknown): Obj | undefined {
  return value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Obj) : undefined;
}

function str(obj: Obj | undefined, key: string): string | undefined {
  const v = obj?.[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return undefined;
}

/** `{ key?: value }` without the key when the value is undefined (exactOptionalPropertyTypes). */
function opt<K extends string, V>(key: K, value: V | undefined): { [P in K]?: V } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: V };
}

function parseExec(raw: Obj, file: string, name: string): ExecConfig {
  const command = str(raw, "command");
  if (command === undefined || command === "") {
    throw configError(`user "${name}" has an exec section without a command`, file, "set users[].user.exec.command");
  }
  const apiVersion = str(raw, "apiVersion") ?? "";
  const args = Array.isArray(raw["args"]) ? raw["args"].map((a) => String(a)) : [];
  const env = Array.isArray(raw["env"])
    ? raw["env"].map((e) => ({ name: str(asObject(e), "name") ?? "", value: str(asObject(e), "value") ?? "" }))
    : [];
  return {
    apiVersion,
    command,
    args,
    env,
    provideClusterInfo: raw["provideClusterInfo"] === true,
    ...opt("installHint", str(raw, "installHint")),
    ...opt("interactiveMode", str(raw, "interactiveMode")),
  };
}

function parseCluster(raw: Obj | undefined): ClusterEntry {
  return {
    server: str(raw, "server") ?? "",
    insecureSkipTlsVerify: raw?.["insecure-skip-tls-verify"] === true,
    ...opt("certificateAuthority", str(raw, "certificate-authority")),
    ...opt("certificateAuthorityData", str(raw, "certificate-authority-data")),
    ...opt("tlsServerName", str(raw, "tls-server-name")),
    ...opt("proxyUrl", str(raw, "proxy-url")),
  };
}

function parseUser(raw: Obj | undefined, file: string, name: string): UserEntry {
  const exec = asObject(raw?.["exec"]);
  const authProvider = asObject(raw?.["auth-provider"]);
  return {
    ...opt("token", str(raw, "token")),
    ...opt("tokenFile", str(raw, "tokenFile")),
    ...opt("clientCertificate", str(raw, "client-certificate")),
    ...opt("clientCertificateData", str(raw, "client-certificate-data")),
    ...opt("clientKey", str(raw, "client-key")),
    ...opt("clientKeyData", str(raw, "client-key-data")),
    ...opt("username", str(raw, "username")),
    ...opt("password", str(raw, "password")),
    ...opt("exec", exec === undefined ? undefined : parseExec(exec, file, name)),
    ...opt("authProvider", authProvider === undefined ? undefined : (str(authProvider, "name") ?? "unknown")),
  };
}

function parseContext(raw: Obj | undefined): ContextEntry {
  return {
    cluster: str(raw, "cluster") ?? "",
    user: str(raw, "user") ?? "",
    ...opt("namespace", str(raw, "namespace")),
  };
}

/** One parsed kubeconfig file. */
export interface KubeconfigFile {
  readonly currentContext?: string;
  readonly clusters: readonly [string, ClusterEntry][];
  readonly users: readonly [string, UserEntry][];
  readonly contexts: readonly [string, ContextEntry][];
}

export function parseKubeconfig(text: string, file: string): KubeconfigFile {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (error) {
    const line = error instanceof YamlError ? `:${error.line}` : "";
    throw configError(
      `cannot parse kubeconfig ${file}${line}: ${(error as Error).message}`,
      file,
      "fix the YAML, or point --kubeconfig/KUBECONFIG at a valid file (`kubectl config view` shows what kubectl reads)",
    );
  }
  if (doc === null) return { clusters: [], users: [], contexts: [] };
  const root = asObject(doc);
  if (root === undefined) {
    throw configError(`kubeconfig ${file} is not a mapping`, file, "a kubeconfig has clusters, users and contexts");
  }
  const named = <T>(key: string, inner: string, parse: (raw: Obj | undefined, name: string) => T): [string, T][] => {
    const list = root[key];
    if (list === undefined || list === null) return [];
    if (!Array.isArray(list)) throw configError(`"${key}" in ${file} must be a list`, file, `fix "${key}"`);
    return list.map((item, index) => {
      const entry = asObject(item);
      const name = str(entry, "name");
      if (name === undefined || name === "") {
        throw configError(`${key}[${index}] in ${file} has no name`, file, `give every entry of "${key}" a name`);
      }
      return [name, parse(asObject(entry?.[inner]), name)];
    });
  };
  const current = str(root, "current-context");
  return {
    ...opt("currentContext", current === "" ? undefined : current),
    clusters: named("clusters", "cluster", (raw) => parseCluster(raw)),
    users: named("users", "user", (raw, name) => parseUser(raw, file, name)),
    contexts: named("contexts", "context", (raw) => parseContext(raw)),
  };
}

/** Merges parsed files with kubectl's rules: first definition of a name wins, first current-context wins. */
export function mergeKubeconfigs(
  files: readonly { readonly path: string; readonly parsed: KubeconfigFile }[],
): Kubeconfig {
  const clusters = new Map<string, Sourced<ClusterEntry>>();
  const users = new Map<string, Sourced<UserEntry>>();
  const contexts = new Map<string, Sourced<ContextEntry>>();
  let currentContext: string | undefined;
  for (const { path, parsed } of files) {
    currentContext ??= parsed.currentContext;
    for (const [name, value] of parsed.clusters) if (!clusters.has(name)) clusters.set(name, { value, file: path });
    for (const [name, value] of parsed.users) if (!users.has(name)) users.set(name, { value, file: path });
    for (const [name, value] of parsed.contexts) if (!contexts.has(name)) contexts.set(name, { value, file: path });
  }
  return { files: files.map((f) => f.path), ...opt("currentContext", currentContext), clusters, users, contexts };
}

/** The kubeconfig file list kubectl would use. `explicit` files must exist; KUBECONFIG entries may be missing. */
export function kubeconfigPaths(options: {
  readonly kubeconfig?: string | undefined;
  readonly env: NodeJS.ProcessEnv;
  readonly cwd?: string;
}): { readonly paths: readonly string[]; readonly explicit: boolean; readonly origin: string } {
  const cwd = options.cwd ?? process.cwd();
  if (options.kubeconfig !== undefined && options.kubeconfig !== "") {
    return { paths: [resolve(cwd, options.kubeconfig)], explicit: true, origin: "--kubeconfig" };
  }
  const fromEnv = options.env["KUBECONFIG"];
  if (fromEnv !== undefined && fromEnv !== "") {
    const paths = [
      ...new Set(
        fromEnv
          .split(":")
          .filter((p) => p !== "")
          .map((p) => resolve(cwd, p)),
      ),
    ];
    return { paths, explicit: false, origin: "KUBECONFIG" };
  }
  const home = options.env["HOME"] ?? homedir();
  return { paths: [resolve(home, ".kube", "config")], explicit: false, origin: "~/.kube/config" };
}

/**
 * Larger files are refused. Real kubeconfigs are kilobytes (a few hundred clusters with embedded certificates stay
 * under a few MiB); the limit stops a wrong path (/dev/zero, a disk image) before it fills memory.
 */
export const KUBECONFIG_MAX_BYTES = 16 * 1024 * 1024;

export async function loadKubeconfig(options: {
  readonly kubeconfig?: string | undefined;
  readonly env: NodeJS.ProcessEnv;
  readonly fs: FileSystem;
  readonly cwd?: string;
}): Promise<Kubeconfig> {
  const { paths, explicit, origin } = kubeconfigPaths(options);
  const files: { path: string; parsed: KubeconfigFile }[] = [];
  for (const path of paths) {
    const text = await readUserText(options.fs, path, {
      what: "kubeconfig",
      maxBytes: KUBECONFIG_MAX_BYTES,
      code: "KUBECONFIG",
      hint: `check the ${origin} path; a kubeconfig is a YAML file (\`kubectl config view\` shows what kubectl reads)`,
    });
    if (text === undefined) {
      if (explicit) {
        throw configError(
          `kubeconfig ${path} does not exist`,
          path,
          "check the --kubeconfig path (`istio-vm dev --write-kubeconfig FILE` writes one for the dev cluster)",
          "KUBECONFIG_NOT_FOUND",
        );
      }
      continue;
    }
    files.push({ path, parsed: parseKubeconfig(text, path) });
  }
  if (files.length === 0) {
    throw configError(
      `no kubeconfig found (looked in ${origin}: ${paths.join(", ")})`,
      paths.join(":"),
      "pass --kubeconfig FILE or set KUBECONFIG; `kubectl config view` shows whether kubectl has one",
      "KUBECONFIG_NOT_FOUND",
    );
  }
  return mergeKubeconfigs(files);
}

function absolute(path: string | undefined, file: string): string | undefined {
  if (path === undefined || path === "") return undefined;
  if (path.startsWith("~/")) return resolve(homedir(), path.slice(2));
  return isAbsolute(path) ? path : resolve(dirname(file), path);
}

/** Selects a context (the --context, else current-context) and resolves its cluster, user and namespace. */
export function resolveContext(config: Kubeconfig, selection: KubeconfigSelection = {}): ResolvedContext {
  const where = config.files.join(":");
  const contextName = selection.context ?? config.currentContext;
  const names = [...config.contexts.keys()];
  const available = names.length === 0 ? "none defined" : names.join(", ");
  if (contextName === undefined || contextName === "") {
    throw configError(
      `the kubeconfig sets no current-context (contexts: ${available})`,
      where,
      "pass --context NAME, or run `kubectl config use-context NAME`",
      "KUBECONFIG_NO_CONTEXT",
    );
  }
  const context = config.contexts.get(contextName);
  if (context === undefined) {
    throw configError(
      `context "${contextName}" is not in the kubeconfig (contexts: ${available})`,
      where,
      "pick one of the listed contexts with --context (`kubectl config get-contexts` lists them)",
      "KUBECONFIG_NO_CONTEXT",
    );
  }
  const cluster = config.clusters.get(context.value.cluster);
  if (cluster === undefined) {
    throw configError(
      `context "${contextName}" refers to cluster "${context.value.cluster}", which the kubeconfig does not define`,
      context.file,
      "add the cluster to the kubeconfig or fix the context's cluster name",
    );
  }
  if (cluster.value.server === "") {
    throw configError(
      `cluster "${context.value.cluster}" has no server URL`,
      cluster.file,
      "set clusters[].cluster.server, e.g. https://203.0.113.10:6443",
    );
  }
  const userName = context.value.user;
  const user = userName === "" ? undefined : config.users.get(userName);
  if (userName !== "" && user === undefined) {
    throw configError(
      `context "${contextName}" refers to user "${userName}", which the kubeconfig does not define`,
      context.file,
      "add the user to the kubeconfig or fix the context's user name",
    );
  }
  const c = cluster.value;
  const u = user?.value ?? {};
  const userFile = user?.file ?? context.file;
  const namespace = selection.namespace ?? context.value.namespace;
  return {
    contextName,
    clusterName: context.value.cluster,
    userName,
    namespace: namespace === undefined || namespace === "" ? "default" : namespace,
    cluster: { ...c, ...opt("certificateAuthority", absolute(c.certificateAuthority, cluster.file)) },
    user: {
      ...u,
      ...opt("tokenFile", absolute(u.tokenFile, userFile)),
      ...opt("clientCertificate", absolute(u.clientCertificate, userFile)),
      ...opt("clientKey", absolute(u.clientKey, userFile)),
      ...opt(
        "exec",
        u.exec === undefined
          ? undefined
          : {
              ...u.exec,
              command: u.exec.command.includes("/") ? (absolute(u.exec.command, userFile) ?? "") : u.exec.command,
            },
      ),
    },
    userFile,
    files: config.files,
  };
}
