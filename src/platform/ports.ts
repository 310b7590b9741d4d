/**
 * Every adapter to the outside world, as one set: the composition root (src/main.ts) builds the real ones once and
 * passes them down, to each command in its `CommandContext` and to the agent's components in `AgentDeps`; tests build
 * the same set with fakes (test/fakes/ports.ts). Building them costs nothing at start: the adapters load their Node
 * built-ins on first use (`loadBuiltin`), and the child spawner is made when first asked for.
 */
import type { ChildSpawner } from "./child.js";
import type { Clock } from "./clock.js";
import type { DnsClient } from "./dns.js";
import type { FileSystem } from "./fs.js";
import type { HttpClient } from "./http.js";
import type { LinkFileSystem } from "./links.js";
import type { ProcessRunner } from "./process.js";
import type { TcpConnector } from "./tcp.js";
import type { TlsProber } from "./tls.js";
import type { UserDirectory } from "./users.js";

export interface SystemPorts {
  readonly env: NodeJS.ProcessEnv;
  readonly fs: FileSystem;
  /** Symbolic links and whole-directory writes (the certificate store). */
  readonly links: LinkFileSystem;
  /** Short-lived commands. */
  readonly runner: ProcessRunner;
  /**
   * The process's one spawner of long-lived children (Envoy), made on first call: it owns the exit handler and the
   * watchdog that keep a child from outliving the process, so there must be only one.
   */
  readonly spawner: () => ChildSpawner;
  readonly clock: Clock;
  readonly dns: DnsClient;
  readonly http: HttpClient;
  readonly tls: TlsProber;
  /** A bare TCP connect (the tcpSocket health probe). */
  readonly tcp: TcpConnector;
  /** The user database (the proxy user's uid and gid). */
  readonly users: UserDirectory;
  /** This process's effective uid; undefined on a platform without one. Decides whether files can be chowned. */
  readonly uid: number | undefined;
  /** This machine's host name (the Envoy node id's POD_NAME when that is empty). */
  readonly hostname: () => string;
}

/** Just the ports of `from` (a command's context, the agent's options), to hand on without the rest. */
export function portsOf(from: SystemPorts): SystemPorts {
  return {
    env: from.env,
    fs: from.fs,
    links: from.links,
    runner: from.runner,
    spawner: from.spawner,
    clock: from.clock,
    dns: from.dns,
    http: from.http,
    tls: from.tls,
    tcp: from.tcp,
    users: from.users,
    uid: from.uid,
    hostname: from.hostname,
  };
}
