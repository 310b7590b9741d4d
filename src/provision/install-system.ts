/**
 * `istio-vm install`, reading the system: where everything goes, what is there now (files, owners, the package, the
 * units, the resolver), and systemd's view of a unit. Nothing here changes anything.
 */
import { join } from "node:path";
import type { ConfigValues } from "../config/registry.js";
import { configFilePaths } from "../config/load.js";
import type { Clock } from "../platform/clock.js";
import type { FileOwner, FileSystem } from "../platform/fs.js";
import type { SystemPorts } from "../platform/ports.js";
import type { ProcessRunner } from "../platform/process.js";
import type { UserDirectory } from "../platform/users.js";
import { INSTALL_RECORD_PATH, parseInstallRecord } from "./install-record.js";
import type { ExistingFile, InstallPaths, OwnerName, SystemState } from "./install-plan.js";
import { PACKAGE, PROXY_USER, UNIT } from "./install-plan.js";

/** The install's ports, taken from the composition root's; progress lines go to `progress`. */
export function installPortsFrom(ports: SystemPorts, progress: (line: string) => void): InstallPorts {
  const { fs, runner, clock, env, users } = ports;
  return { fs, runner, clock, env, users, isRoot: ports.uid === 0, progress };
}

export interface InstallPorts {
  readonly fs: FileSystem;
  readonly runner: ProcessRunner;
  readonly clock: Clock;
  readonly env: NodeJS.ProcessEnv;
  /** Where istio-proxy is looked up (NSS; the relocated passwd file under ISTIO_VM_ROOT). */
  readonly users: UserDirectory;
  /** Whether this process may chown (root). */
  readonly isRoot: boolean;
  /** Progress lines (stderr). */
  readonly progress: (line: string) => void;
}

/** Where everything goes, from the configuration the agent will read (so OUTPUT_CERTS etc. in the bundle count). */
export function installPaths(env: NodeJS.ProcessEnv, values: ConfigValues): InstallPaths {
  const files = configFilePaths(env);
  const root = files.root;
  const at = (path: string): string => (root === "" ? path : join(root, path));
  return {
    clusterEnv: files.cluster,
    sidecarEnv: files.sidecar,
    certsDir: values.OUTPUT_CERTS,
    tokenFile: values.ISTIO_TOKEN_FILE,
    dnsmasqDir: values.ISTIO_DNSMASQ_DIR,
    resolvedConfDir: values.ISTIO_RESOLVED_CONF_DIR,
    resolvConf: values.ISTIO_RESOLV_CONF,
    dhclientHooksDir: at("/etc/dhcp/dhclient-enter-hooks.d"),
    debCache: at("/var/cache/istio-vm-agent"),
    dnsmasqBinary: at("/usr/sbin/dnsmasq"),
    installRecord: at(INSTALL_RECORD_PATH),
  };
}

/** uid and gid of the proxy user, once the package has created it. */
export async function proxyOwner(users: UserDirectory): Promise<FileOwner | undefined> {
  const entry = await users.lookup(PROXY_USER);
  return entry === undefined ? undefined : { uid: entry.uid, gid: entry.gid };
}

async function systemctl(
  runner: ProcessRunner,
  args: readonly string[],
): Promise<{ code: number | null; out: string }> {
  const result = await runner.run("systemctl", args, { timeoutMs: 30_000 });
  return { code: result.code, out: result.stdout.trim() };
}

export async function readExisting(fs: FileSystem, path: string): Promise<ExistingFile | undefined> {
  const stat = await fs.stat(path);
  if (stat === undefined || stat.isDirectory) return undefined;
  return { content: await fs.readFile(path), mode: stat.mode, uid: stat.uid, gid: stat.gid };
}

export async function inspectSystem(
  ports: InstallPorts,
  paths: InstallPaths,
  candidatePaths: readonly string[],
): Promise<SystemState> {
  const relocated = configFilePaths(ports.env).root !== "";
  const files = new Map<string, ExistingFile | undefined>();
  for (const path of [...new Set(candidatePaths)]) files.set(path, await readExisting(ports.fs, path));
  const owners: Partial<Record<OwnerName, FileOwner>> = {};
  if (!relocated || ports.isRoot) {
    owners.root = { uid: 0, gid: 0 };
    const proxy = await proxyOwner(ports.users);
    if (proxy !== undefined) owners[PROXY_USER] = proxy;
  }
  const at = (p: string): string => (relocated ? join(configFilePaths(ports.env).root, p) : p);
  const resolverFiles = {
    resolvconf: (await ports.fs.exists(at("/sbin/resolvconf"))) || (await ports.fs.exists(at("/usr/sbin/resolvconf"))),
    dhclient:
      (await ports.fs.exists(at("/sbin/dhclient-script"))) || (await ports.fs.exists(at("/usr/sbin/dhclient-script"))),
    networkManager: await ports.fs.exists(at("/run/NetworkManager")),
  };
  const dnsmasqInstalled = await ports.fs.exists(paths.dnsmasqBinary);
  const recordFile = files.get(paths.installRecord) ?? (await readExisting(ports.fs, paths.installRecord));
  files.set(paths.installRecord, recordFile);
  const record =
    recordFile === undefined ? undefined : parseInstallRecord(recordFile.content.toString("utf8"), paths.installRecord);
  if (relocated) {
    return {
      relocated,
      installedVersion: undefined,
      unitEnabled: false,
      unitActive: false,
      dnsmasqInstalled,
      dnsmasqActive: false,
      resolver: { resolvedActive: false, ...resolverFiles },
      files,
      owners,
      record,
    };
  }
  const query = await ports.runner.run("dpkg-query", ["-W", "-f", "${Status}\\t${Version}", PACKAGE], {
    timeoutMs: 30_000,
  });
  const [status = "", version] = query.stdout.split("\t");
  const installedVersion = query.code === 0 && status.endsWith(" installed") ? version : undefined;
  const [enabled, active, dnsmasq, resolved] = await Promise.all([
    systemctl(ports.runner, ["is-enabled", UNIT]),
    systemctl(ports.runner, ["is-active", UNIT]),
    systemctl(ports.runner, ["is-active", "dnsmasq.service"]),
    systemctl(ports.runner, ["is-active", "systemd-resolved.service"]),
  ]);
  return {
    relocated,
    installedVersion,
    unitEnabled: enabled.out === "enabled",
    unitActive: active.out === "active",
    dnsmasqInstalled,
    dnsmasqActive: dnsmasq.out === "active",
    resolver: { resolvedActive: resolved.out === "active", ...resolverFiles },
    files,
    owners,
    record,
  };
}

export interface UnitState {
  readonly ActiveState: string;
  readonly SubState: string;
  readonly StatusText: string;
  readonly Result: string;
  readonly MainPID: string;
}

export async function unitState(runner: ProcessRunner, unit: string = UNIT): Promise<UnitState> {
  const result = await runner.run(
    "systemctl",
    [
      "show",
      unit,
      "--property=ActiveState",
      "--property=SubState",
      "--property=StatusText",
      "--property=Result",
      "--property=MainPID",
    ],
    { timeoutMs: 30_000 },
  );
  const props = new Map(
    result.stdout
      .split("\n")
      .filter((l) => l.includes("="))
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
  return {
    ActiveState: props.get("ActiveState") ?? "unknown",
    SubState: props.get("SubState") ?? "unknown",
    StatusText: props.get("StatusText") ?? "",
    Result: props.get("Result") ?? "",
    MainPID: props.get("MainPID") ?? "0",
  };
}
