/**
 * `istio-vm setup HOST…`: the bundle to many VMs over OpenSSH, in parallel. Per host: when the bundle carries a
 * .deb, one `ssh` asks dpkg which version of the package the host has; `scp` then copies the bundle into the login
 * user's home — without its .deb when the host already has that version (the fleet's one bundle, re-planned once
 * without the package, not per host) — and one `ssh` bootstraps the package from the bundle's own .deb when istio-vm
 * is missing (checked against SHA256SUMS before dpkg sees it), runs `sudo -n istio-vm install` (per-host values such
 * as ISTIO_SVC_IP passed with `--set`), and removes the bundle. OpenSSH itself does the connecting, so
 * ~/.ssh/config, agents, ProxyJump and known_hosts apply; `--ssh`/`--scp` replace the commands as ISTIO_RUN/ISTIO_CP
 * did.
 *
 * Connection sharing: the steps of one host share one SSH connection (OpenSSH's ControlMaster=auto, the socket in a
 * private directory the caller makes and removes, ControlPersist as the safety net should this process die), and the
 * master is told to exit (`ssh -O exit`) when the host is done, whatever the outcome. The key exchange and
 * authentication are then paid once per host instead of once per step, on both ends.
 */
import { createHash } from "node:crypto";
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
  /** One shared connection per host (see the header); undefined: every step connects anew. */
  readonly multiplex?: MultiplexSettings;
}

export interface MultiplexSettings {
  /** A private directory (0700) for the control sockets; the caller makes it and removes it afterwards. */
  readonly controlDir: string;
  /** ControlPersist: seconds an idle master waits for the next step before it exits by itself. */
  readonly persistS: number;
}

/** The bundle's .deb and the bundle without it, for hosts that have that version already. */
export interface PackageSettings {
  readonly name: string;
  readonly version: string;
  /** Local path of the bundle without the .deb. */
  readonly slimBundlePath: string;
}

export interface SetupSettings {
  readonly ssh: SshSettings;
  /** Local path of the bundle. */
  readonly bundlePath: string;
  /** Start of the name the bundle gets in the remote login directory (see remoteBundleName). */
  readonly remoteName: string;
  /** The bundle's .deb member, for the bootstrap (undefined: the bundle has none). */
  readonly debMember: string | undefined;
  /** Set when the bundle has a .deb: the version check before the copy. */
  readonly package?: PackageSettings;
  /** Whether the bundle already sets ISTIO_SVC_IP (else an IP-literal HOST becomes the VM's ISTIO_SVC_IP). */
  readonly bundleHasSvcIp: boolean;
  /** Replaces the default remote script; `{bundle}` and `{host}` are substituted. */
  readonly remoteCommand?: string;
  readonly parallel: number;
  readonly retries: number;
  readonly retryBaseMs: number;
  readonly commandTimeoutMs: number;
}

export type HostPhase = "queued" | "checking" | "copying" | "installing" | "waiting" | "done" | "failed";

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
  readonly step: SetupStep | undefined;
  readonly detail: string;
  readonly output: string;
  /**
   * `copied`: the .deb went with the bundle; `present`: the host had the version, the bundle went without it;
   * undefined: the bundle has no .deb, or the host failed before the copy was done.
   */
  readonly package: "copied" | "present" | undefined;
}

export type SetupStep = "check" | "copy" | "install";

/** What goes to one host: the whole bundle, or the bundle without its .deb. */
export type BundleVariant = "whole" | "without-deb";

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

/**
 * HOST's control socket: named by a short hash of `[user@]host` rather than ssh's `%C` (40 hex digits), because a
 * Unix socket's path holds at most 107 bytes (unix(7)) and ssh binds it under a name 17 characters longer first.
 */
export function controlPath(multiplex: MultiplexSettings, rawHost: string): string {
  return `${multiplex.controlDir}/${createHash("sha256").update(rawHost).digest("hex").slice(0, 12)}`;
}

/** The options that make ssh and scp share one connection per host (ssh_config(5): ControlMaster and friends). */
function multiplexArgs(settings: SshSettings, rawHost: string): string[] {
  const m = settings.multiplex;
  if (m === undefined) return [];
  const path = controlPath(m, rawHost);
  return ["-o", "ControlMaster=auto", "-o", `ControlPath=${path}`, "-o", `ControlPersist=${m.persistS}`];
}

function commonArgs(settings: SshSettings, portFlag: "-p" | "-P", rawHost: string): string[] {
  return [
    "-o",
    "BatchMode=yes",
    "-o",
    `ConnectTimeout=${settings.connectTimeoutS}`,
    ...multiplexArgs(settings, rawHost),
    ...(settings.port === undefined ? [] : [portFlag, String(settings.port)]),
    ...(settings.identity === undefined ? [] : ["-i", settings.identity]),
  ];
}

/** The scp command line that copies the bundle (or its variant without the .deb) to HOST (pure). */
export function copyCommand(
  settings: SetupSettings,
  rawHost: string,
  variant: BundleVariant = "whole",
): { command: string; args: string[] } {
  const { user, host } = parseHost(rawHost);
  const login = user ?? settings.ssh.user;
  const target = `${login === undefined ? "" : `${login}@`}${isIP(host) === 6 ? `[${host}]` : host}:${remoteBundleName(settings, rawHost)}`;
  const [command = "scp", ...pre] = settings.ssh.scp;
  const local =
    variant === "without-deb" && settings.package !== undefined ? settings.package.slimBundlePath : settings.bundlePath;
  // `--`: neither the bundle path nor the target can be read as an option, whatever they look like.
  return { command, args: [...pre, ...commonArgs(settings.ssh, "-P", rawHost), "-q", "--", local, target] };
}

/**
 * `ssh` (with the words of --ssh) for HOST ([user@]host): `options`, the login, `control` (ssh's own requests, e.g.
 * `-O exit`), then `--`, the host and `remote` (pure). `--` ends ssh's options: the host is never read as one. After
 * it, OpenSSH (ssh.c, opt_terminated) takes the host and then the command verbatim; older versions parse options
 * again after the host, which the command word (it starts with `sh`) never looks like.
 */
function sshInvocation(
  settings: SetupSettings,
  rawHost: string,
  parts: { readonly options: readonly string[]; readonly control?: readonly string[]; readonly remote?: string },
): { command: string; args: string[] } {
  const { user, host } = parseHost(rawHost);
  const login = user ?? settings.ssh.user;
  const [command = "ssh", ...pre] = settings.ssh.ssh;
  return {
    command,
    args: [
      ...pre,
      ...parts.options,
      ...(login === undefined ? [] : ["-l", login]),
      ...(parts.control ?? []),
      "--",
      host,
      ...(parts.remote === undefined ? [] : [parts.remote]),
    ],
  };
}

/** An ssh command line that runs `script` with sh on HOST (pure). */
function sshCommand(settings: SetupSettings, rawHost: string, script: string): { command: string; args: string[] } {
  return sshInvocation(settings, rawHost, {
    options: commonArgs(settings.ssh, "-p", rawHost),
    remote: `sh -c ${shellQuote(script)}`,
  });
}

/** The check before the copy: the package's status and version as dpkg has them, one line (pure). */
export function checkCommand(settings: SetupSettings, rawHost: string): { command: string; args: string[] } {
  const name = shellQuote(settings.package?.name ?? "istio-vm-agent");
  return sshCommand(settings, rawHost, `dpkg-query -W -f '\${Status}\\t\${Version}\\n' ${name} 2>/dev/null; true\n`);
}

/** Whether the check's answer shows the bundle's version installed (anything else: copy the package). */
export function hasPackageVersion(stdout: string, version: string): boolean {
  const [status = "", installed] = stdout.trim().split("\t");
  return status.endsWith(" installed") && installed === version;
}

/** Tells HOST's shared connection to end (`ssh -O exit`), or undefined without one (pure). */
export function closeCommand(
  settings: SetupSettings,
  rawHost: string,
): { command: string; args: string[] } | undefined {
  const m = settings.ssh.multiplex;
  if (m === undefined) return undefined;
  return sshInvocation(settings, rawHost, {
    options: [
      "-o",
      `ControlPath=${controlPath(m, rawHost)}`,
      ...(settings.ssh.port === undefined ? [] : ["-p", String(settings.ssh.port)]),
    ],
    control: ["-O", "exit"],
  });
}

/** The remote shell script run after the copy (pure). */
export function remoteScript(settings: SetupSettings, rawHost: string, variant: BundleVariant = "whole"): string {
  const bundle = shellQuote(remoteBundleName(settings, rawHost));
  const cleanup = `rc=$?; rm -f ${bundle}; exit $rc`;
  if (settings.remoteCommand !== undefined) {
    const command = settings.remoteCommand.replaceAll("{bundle}", bundle).replaceAll("{host}", shellQuote(rawHost));
    // In a subshell, so an `exit` in the command still reaches the cleanup: the copy holds the VM's credentials.
    return `(\n${command}\n)\n${cleanup}\n`;
  }
  const { host } = parseHost(rawHost);
  const svcIp = !settings.bundleHasSvcIp && isIP(host) !== 0 ? ` --set ISTIO_SVC_IP=${shellQuote(host)}` : "";
  const debMember = variant === "whole" ? settings.debMember : undefined;
  const deb = debMember === undefined ? undefined : shellQuote(debMember);
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
          `    (cd "$d" && grep '  ${debMember ?? ""}$' SHA256SUMS | sha256sum -c --quiet -) &&`,
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
export function runCommand(
  settings: SetupSettings,
  rawHost: string,
  variant: BundleVariant = "whole",
): { command: string; args: string[] } {
  return sshCommand(settings, rawHost, remoteScript(settings, rawHost, variant));
}

function lastLine(text: string): string {
  const lines = text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "");
  return lines[lines.length - 1] ?? "";
}

interface StepLine {
  readonly step: SetupStep;
  readonly phase: HostPhase;
  readonly what: string;
  readonly line: { command: string; args: string[] };
}

async function setupHost(host: string, settings: SetupSettings, ports: SetupPorts): Promise<HostResult> {
  const started = ports.clock.monotonic();
  let attempts = 0;
  let output = "";
  let packageState: HostResult["package"];
  const update = (phase: HostPhase, attempt: number, detail: string, ended?: number): void => {
    ports.onUpdate({ host, phase, attempt, attempts, startedMs: started, endedMs: ended, detail });
  };
  const finish = (
    result: Omit<HostResult, "host" | "attempts" | "durationMs" | "package">,
    attempt = 0,
  ): HostResult => {
    const ended = ports.clock.monotonic();
    update(result.ok ? "done" : "failed", attempt, result.detail, ended);
    return { host, attempts, durationMs: ended - started, package: packageState, ...result };
  };
  /** Runs one step with retries of SSH's own failures; the result, or the failure that ends this host. */
  const runStep = async (step: StepLine): Promise<{ ok: true; stdout: string } | { ok: false; result: HostResult }> => {
    for (let attempt = 1; ; attempt++) {
      attempts++;
      update(step.phase, attempt, step.what);
      let code: number | null;
      let stderr: string;
      let stdout = "";
      try {
        const result = await ports.runner.run(step.line.command, step.line.args, {
          timeoutMs: settings.commandTimeoutMs,
          ...(ports.signal === undefined ? {} : { signal: ports.signal }),
        });
        code = result.timedOut ? null : result.code;
        stderr = result.timedOut ? `timed out after ${Math.round(settings.commandTimeoutMs / 1000)}s` : result.stderr;
        stdout = result.stdout;
        // The check's answer is data, not output to show.
        output += (step.step === "check" ? "" : result.stdout) + result.stderr;
      } catch (error) {
        code = null;
        stderr = error instanceof Error ? error.message : String(error);
        output += `${stderr}\n`;
      }
      if (code === 0) return { ok: true, stdout };
      const transient = code === SSH_FAILURE || (step.step === "copy" && scpLostConnection(code, stderr));
      const detail = lastLine(stderr) || `${formatCommand(step.line.command, [])} exited ${code ?? "by a signal"}`;
      if (!transient || attempt > settings.retries) {
        return { ok: false, result: finish({ ok: false, step: step.step, detail, output }, attempt) };
      }
      const delay = backoffMs(attempt, settings.retryBaseMs);
      update("waiting", attempt, `${detail}; retry in ${(delay / 1000).toFixed(1)}s`);
      await ports.clock.sleep(delay, ports.signal);
    }
  };

  let variant: BundleVariant = "whole";
  if (settings.package !== undefined) {
    const checked = await runStep({
      step: "check",
      phase: "checking",
      what: `ssh: dpkg-query ${settings.package.name}`,
      line: checkCommand(settings, host),
    });
    if (!checked.ok) return checked.result;
    variant = hasPackageVersion(checked.stdout, settings.package.version) ? "without-deb" : "whole";
  }
  const copied = await runStep({
    step: "copy",
    phase: "copying",
    what: variant === "whole" ? "scp bundle" : `scp bundle (${settings.package?.version ?? ""} is installed: no .deb)`,
    line: copyCommand(settings, host, variant),
  });
  if (!copied.ok) return copied.result;
  if (settings.package !== undefined) packageState = variant === "whole" ? "copied" : "present";
  const installed = await runStep({
    step: "install",
    phase: "installing",
    what: settings.remoteCommand === undefined ? "ssh: istio-vm install" : "ssh: remote command",
    line: runCommand(settings, host, variant),
  });
  if (!installed.ok) return installed.result;
  return finish({ ok: true, step: undefined, detail: lastLine(output) || "installed", output });
}

/** Ends HOST's shared connection; its outcome changes nothing (no master: the host never connected). */
async function closeConnection(host: string, settings: SetupSettings, ports: SetupPorts): Promise<void> {
  const line = closeCommand(settings, host);
  if (line === undefined) return;
  try {
    await ports.runner.run(line.command, line.args, { timeoutMs: 10_000 });
  } catch {
    // A master left behind exits by itself after ControlPersist.
  }
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
      try {
        results[index] = await setupHost(host, settings, ports);
      } finally {
        await closeConnection(host, settings, ports);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(settings.parallel, hosts.length)) }, () => worker()));
  return results;
}
