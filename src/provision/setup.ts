/**
 * `istio-vm setup HOST…`: the bundle to many VMs over OpenSSH, in parallel. Per host: `scp` the bundle into the
 * login user's home, then one `ssh` that bootstraps the package from the bundle's own .deb when istio-vm is missing
 * (checked against SHA256SUMS before dpkg sees it), runs `sudo -n istio-vm install`, and removes the bundle.
 * OpenSSH itself does the connecting, so ~/.ssh/config, agents, ProxyJump and known_hosts apply; `--ssh`/`--scp`
 * replace the commands as ISTIO_RUN/ISTIO_CP did.
 *
 * Failures: ssh and scp exit 255 for their own errors (connection refused or reset, timeouts, DNS, host key,
 * authentication); those are retried with exponential backoff. Any other exit is the remote command's answer and is
 * final. One host's failure never stops the others; the summary has every host.
 */
import { isIP } from "node:net";
import type { Clock } from "../platform/clock.js";
import type { ProcessRunner } from "../platform/process.js";
import { UsageError } from "../platform/errors.js";
import { formatCommand } from "../platform/process.js";

export interface SshSettings {
  /** The ssh command and its own leading arguments (e.g. ["ssh", "-F", "cfg"]). */
  readonly ssh: readonly string[];
  readonly scp: readonly string[];
  readonly user?: string;
  readonly port?: number;
  readonly identity?: string;
  readonly connectTimeoutS: number;
}

export interface SetupSettings {
  readonly ssh: SshSettings;
  /** Local path of the bundle. */
  readonly bundlePath: string;
  /** Start of the name the bundle gets in the remote login directory (see remoteBundleName). */
  readonly remoteName: string;
  /** The bundle's .deb member, for the bootstrap (undefined: the bundle has none). */
  readonly debMember: string | undefined;
  /** Whether the bundle already sets ISTIO_SVC_IP (else an IP-literal HOST becomes the VM's ISTIO_SVC_IP). */
  readonly bundleHasSvcIp: boolean;
  /** Replaces the default remote script; `{bundle}` and `{host}` are substituted. */
  readonly remoteCommand?: string;
  readonly parallel: number;
  readonly retries: number;
  readonly retryBaseMs: number;
  readonly commandTimeoutMs: number;
}

export type HostPhase = "queued" | "copying" | "installing" | "waiting" | "done" | "failed";

export interface HostStatus {
  readonly host: string;
  readonly phase: HostPhase;
  /** Attempts of the current step. */
  readonly attempt: number;
  readonly attempts: number;
  readonly startedMs: number | undefined;
  readonly endedMs: number | undefined;
  /** Last line of output, the error, or what is being waited for. */
  readonly detail: string;
}

export interface HostResult {
  readonly host: string;
  readonly ok: boolean;
  readonly attempts: number;
  readonly durationMs: number;
  readonly step: "copy" | "install" | undefined;
  readonly detail: string;
  readonly output: string;
}

export interface SetupPorts {
  readonly runner: ProcessRunner;
  readonly clock: Clock;
  readonly onUpdate: (status: HostStatus) => void;
  readonly signal?: AbortSignal;
}

/** The exit status OpenSSH uses for its own errors (never the remote command's, barring a command that exits 255). */
export const SSH_FAILURE = 255;

/**
 * scp's other way of saying the connection failed: when its ssh transport dies first (refused, reset), scp can get
 * SIGPIPE writing to it and exit 1 with only "lost connection" (OpenSSH scp.c, `lostconn`), which is a transport
 * failure to retry, not an answer from the host. Which of the two exits happens is a race.
 */
export function scpLostConnection(code: number | null, stderr: string): boolean {
  return code === 1 && /^lost connection$/m.test(stderr);
}

/** Delay before retry `attempt` (1-based): base × 2^(attempt−1), at most 30 s. */
export function backoffMs(attempt: number, baseMs: number): number {
  return Math.min(30_000, baseMs * 2 ** Math.max(0, attempt - 1));
}

export interface HostAddress {
  readonly user: string | undefined;
  readonly host: string;
}

/**
 * A login name as POSIX allows it (letters, digits, `.`, `_`, `-`, not starting with `-`), plus `@` inside it for
 * directory users (`jdoe@corp.example`, SSSD/AD), and a trailing `$` (Samba machine accounts).
 */
const LOGIN_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.@-]*\$?$/;
/** A host name or ~/.ssh/config alias: dot-separated labels of letters, digits, `-` and `_`, no label starts with `-`. */
const HOST_NAME =
  /^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$/;
/** An IPv6 literal with an optional zone (fe80::1%eth0): isIP accepts the zone, whose name is kept to safe characters. */
const IPV6_ZONE = /^[^%]+(?:%[A-Za-z0-9_.-]+)?$/;

/** The login name given with --user (ssh -l), checked as the user part of a host is. */
export function parseLogin(user: string): string {
  if (user.length > 256 || !LOGIN_NAME.test(user)) {
    throw new UsageError(
      `--user '${user}' is not a login name`,
      "letters, digits, '.', '_', '-' (not starting with '-'), e.g. --user admin",
    );
  }
  return user;
}

function hostError(raw: string, message: string): UsageError {
  return new UsageError(
    `'${raw}' is not a host: ${message}`,
    "give [user@]host, where host is a host name, an IPv4 address or an IPv6 address (bracketed or not)",
  );
}

/**
 * `[user@]host`, validated: the user a login name, the host a host name, an IPv4 address, or an IPv6 address (also
 * `[v6]`). Whatever passes can never be read by ssh or scp as an option (nothing starts with `-`), and the command
 * lines put it after `--` all the same.
 */
export function parseHost(raw: string): HostAddress {
  const at = raw.lastIndexOf("@");
  const user = at === -1 ? undefined : raw.slice(0, at);
  let host = at === -1 ? raw : raw.slice(at + 1);
  if (user !== undefined && (user.length > 256 || !LOGIN_NAME.test(user))) {
    throw hostError(raw, `'${user}' is not a login name (letters, digits, '.', '_', '-'; not starting with '-')`);
  }
  const bracketed = host.startsWith("[") && host.endsWith("]");
  if (bracketed) host = host.slice(1, -1);
  if (isIP(host) === 6 && IPV6_ZONE.test(host)) return { user, host };
  if (bracketed) throw hostError(raw, `'${host}' in brackets is not an IPv6 address`);
  if (isIP(host) === 4) return { user, host };
  if (!HOST_NAME.test(host)) throw hostError(raw, `'${host}' is not a host name or IP address`);
  return { user, host };
}

/** A POSIX shell single-quoted word. */
export function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replaceAll("'", `'\\''`)}'`;
}

/**
 * The bundle's name in the login directory: per host, because home directories are often shared between VMs (NFS),
 * where one host's clean-up would otherwise remove another's copy mid-install.
 */
export function remoteBundleName(settings: Pick<SetupSettings, "remoteName">, rawHost: string): string {
  return `${settings.remoteName}-${parseHost(rawHost).host.replace(/[^A-Za-z0-9.-]/g, "_")}.tgz`;
}

function commonArgs(settings: SshSettings, portFlag: "-p" | "-P"): string[] {
  return [
    "-o",
    "BatchMode=yes",
    "-o",
    `ConnectTimeout=${settings.connectTimeoutS}`,
    ...(settings.port === undefined ? [] : [portFlag, String(settings.port)]),
    ...(settings.identity === undefined ? [] : ["-i", settings.identity]),
  ];
}

/** The scp command line that copies the bundle to HOST (pure). */
export function copyCommand(settings: SetupSettings, rawHost: string): { command: string; args: string[] } {
  const { user, host } = parseHost(rawHost);
  const login = user ?? settings.ssh.user;
  const target = `${login === undefined ? "" : `${login}@`}${isIP(host) === 6 ? `[${host}]` : host}:${remoteBundleName(settings, rawHost)}`;
  const [command = "scp", ...pre] = settings.ssh.scp;
  // `--`: neither the bundle path nor the target can be read as an option, whatever they look like.
  return { command, args: [...pre, ...commonArgs(settings.ssh, "-P"), "-q", "--", settings.bundlePath, target] };
}

/** The remote shell script run after the copy (pure). */
export function remoteScript(settings: SetupSettings, rawHost: string): string {
  const bundle = shellQuote(remoteBundleName(settings, rawHost));
  const cleanup = `rc=$?; rm -f ${bundle}; exit $rc`;
  if (settings.remoteCommand !== undefined) {
    const command = settings.remoteCommand.replaceAll("{bundle}", bundle).replaceAll("{host}", shellQuote(rawHost));
    // In a subshell, so an `exit` in the command still reaches the cleanup: the copy holds the VM's credentials.
    return `(\n${command}\n)\n${cleanup}\n`;
  }
  const { host } = parseHost(rawHost);
  const svcIp = !settings.bundleHasSvcIp && isIP(host) !== 0 ? ` --set ISTIO_SVC_IP=${shellQuote(host)}` : "";
  const deb = settings.debMember === undefined ? undefined : shellQuote(settings.debMember);
  const bootstrap =
    deb === undefined
      ? [
          "if ! command -v istio-vm >/dev/null 2>&1; then",
          "  echo 'istio-vm is not installed and the bundle has no .deb (made with --no-deb)' >&2; exit 3",
          "fi",
        ]
      : [
          "if ! command -v istio-vm >/dev/null 2>&1; then",
          "  d=$(mktemp -d) || exit 1",
          `  tar -xzf ${bundle} -C "$d" SHA256SUMS ${deb} &&`,
          `    (cd "$d" && grep '  ${settings.debMember ?? ""}$' SHA256SUMS | sha256sum -c --quiet -) &&`,
          `    $SUDO env DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$d/"${deb} >/dev/null`,
          '  st=$?; rm -rf "$d"; [ "$st" = 0 ] || { echo "bootstrap: installing the bundle\'s .deb failed" >&2; exit "$st"; }',
          "fi",
        ];
  return [
    'SUDO=; [ "$(id -u)" = 0 ] || SUDO="sudo -n"',
    "(",
    ...bootstrap.map((l) => `  ${l}`),
    `  $SUDO istio-vm install ${bundle}${svcIp}`,
    ")",
    cleanup,
    "",
  ].join("\n");
}

/** The ssh command line that runs the remote script on HOST (pure). */
export function runCommand(settings: SetupSettings, rawHost: string): { command: string; args: string[] } {
  const { user, host } = parseHost(rawHost);
  const login = user ?? settings.ssh.user;
  const [command = "ssh", ...pre] = settings.ssh.ssh;
  return {
    command,
    args: [
      ...pre,
      ...commonArgs(settings.ssh, "-p"),
      ...(login === undefined ? [] : ["-l", login]),
      // `--` ends ssh's options: the host is never read as one. After it, OpenSSH (ssh.c, opt_terminated) takes the
      // host and then the command verbatim; older versions parse options again after the host, which the command
      // word (it starts with `sh`) never looks like.
      "--",
      host,
      `sh -c ${shellQuote(remoteScript(settings, rawHost))}`,
    ],
  };
}

function lastLine(text: string): string {
  const lines = text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "");
  return lines[lines.length - 1] ?? "";
}

async function setupHost(host: string, settings: SetupSettings, ports: SetupPorts): Promise<HostResult> {
  const started = ports.clock.monotonic();
  let attempts = 0;
  let output = "";
  const update = (phase: HostPhase, attempt: number, detail: string, ended?: number): void => {
    ports.onUpdate({ host, phase, attempt, attempts, startedMs: started, endedMs: ended, detail });
  };
  const steps = [
    { step: "copy" as const, phase: "copying" as const, line: copyCommand(settings, host) },
    { step: "install" as const, phase: "installing" as const, line: runCommand(settings, host) },
  ];
  for (const { step, phase, line } of steps) {
    for (let attempt = 1; ; attempt++) {
      attempts++;
      update(
        phase,
        attempt,
        step === "copy"
          ? "scp bundle"
          : settings.remoteCommand === undefined
            ? "ssh: istio-vm install"
            : "ssh: remote command",
      );
      let code: number | null;
      let stderr: string;
      try {
        const result = await ports.runner.run(line.command, line.args, {
          timeoutMs: settings.commandTimeoutMs,
          ...(ports.signal === undefined ? {} : { signal: ports.signal }),
        });
        code = result.timedOut ? null : result.code;
        stderr = result.timedOut ? `timed out after ${Math.round(settings.commandTimeoutMs / 1000)}s` : result.stderr;
        output += result.stdout + result.stderr;
      } catch (error) {
        code = null;
        stderr = error instanceof Error ? error.message : String(error);
        output += `${stderr}\n`;
      }
      if (code === 0) break;
      const transient = code === SSH_FAILURE || (step === "copy" && scpLostConnection(code, stderr));
      const detail = lastLine(stderr) || `${formatCommand(line.command, [])} exited ${code ?? "by a signal"}`;
      if (!transient || attempt > settings.retries) {
        const ended = ports.clock.monotonic();
        update("failed", attempt, detail, ended);
        return { host, ok: false, attempts, durationMs: ended - started, step, detail, output };
      }
      const delay = backoffMs(attempt, settings.retryBaseMs);
      update("waiting", attempt, `${detail}; retry in ${(delay / 1000).toFixed(1)}s`);
      await ports.clock.sleep(delay, ports.signal);
    }
  }
  const ended = ports.clock.monotonic();
  const detail = lastLine(output) || "installed";
  update("done", 0, detail, ended);
  return { host, ok: true, attempts, durationMs: ended - started, step: undefined, detail, output };
}

/** Every host, at most `parallel` at a time; resolves with one result per host, in the order given. */
export async function runSetup(
  hosts: readonly string[],
  settings: SetupSettings,
  ports: SetupPorts,
): Promise<HostResult[]> {
  const results: HostResult[] = new Array<HostResult>(hosts.length);
  for (const host of hosts) {
    ports.onUpdate({
      host,
      phase: "queued",
      attempt: 0,
      attempts: 0,
      startedMs: undefined,
      endedMs: undefined,
      detail: "",
    });
  }
  let next = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const index = next++;
      const host = hosts[index];
      if (host === undefined) return;
      results[index] = await setupHost(host, settings, ports);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(settings.parallel, hosts.length)) }, () => worker()));
  return results;
}
