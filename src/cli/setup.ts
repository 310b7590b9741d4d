/**
 * `istio-vm setup HOST…` (bundle → scp → ssh `istio-vm install`, many hosts at once) and `istio-vm setup
 * --cloud-init` (the same bundle as first-boot user-data).
 */
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CommandModule } from "yargs";
import { AgentError, UsageError } from "../platform/errors.js";
import type { VerifiedBundle } from "../provision/bundle.js";
import { planBundleWithoutDeb, readBundle, renderBundle, sha256 } from "../provision/bundle.js";
import { exceededLimits, renderCloudInit } from "../provision/cloud-init.js";
import { redraw, renderFrame, renderPlainLine } from "../provision/progress.js";
import type { HostResult, HostStatus, PackageSettings, SetupSettings } from "../provision/setup.js";
import { parseHost, parseLogin, runSetup } from "../provision/setup.js";
import { readUserText } from "../platform/user-file.js";
import { checkBundleFile } from "../provision/bundle-file.js";
import { programVersion } from "../version.js";
import type { KubeConnector } from "./admin-options.js";
import { checkOutputPath, connectKube, parseDurationFlag } from "./admin-options.js";
import type { BundleArgs } from "./bundle.js";
import { buildBundle, withBundleOptions } from "./bundle.js";
import type { CommandRuntime } from "./context.js";
import { renderJson, renderTable } from "./render.js";

interface SetupArgs extends BundleArgs {
  hosts: string[];
  bundle: string | undefined;
  "hosts-file": string | undefined;
  ssh: string;
  scp: string;
  user: string | undefined;
  port: number | undefined;
  identity: string | undefined;
  parallel: number;
  retries: number;
  "retry-delay": string;
  "connect-timeout": string;
  timeout: string;
  "remote-command": string | undefined;
  "cloud-init": boolean;
  multiplex: boolean;
  output: string | undefined;
}

/** Splits an --ssh/--scp value into words: whitespace separates, single or double quotes group. */
export function splitCommand(flag: string, raw: string): string[] {
  const words: string[] = [];
  const pattern = /"([^"]*)"|'([^']*)'|(\S+)/g;
  for (const match of raw.matchAll(pattern)) words.push(match[1] ?? match[2] ?? match[3] ?? "");
  if (words.length === 0) throw new UsageError(`${flag} is empty`, `e.g. ${flag} "ssh -F ~/.ssh/fleet_config"`);
  return words;
}

/** A hosts file of a few hundred thousand lines; more is not a hosts file. */
const HOSTS_FILE_MAX_BYTES = 16 * 1024 * 1024;

async function hostList(rt: CommandRuntime, args: SetupArgs): Promise<string[]> {
  const hosts = [...args.hosts];
  const hostsFile = args["hosts-file"];
  if (hostsFile !== undefined) {
    const text = await readUserText(rt.fs, hostsFile, {
      what: "hosts file",
      maxBytes: HOSTS_FILE_MAX_BYTES,
      code: "HOSTS_FILE",
      hint: "--hosts-file takes a text file with one [user@]host per line (# starts a comment)",
    });
    if (text === undefined) {
      throw new AgentError({
        code: "HOSTS_FILE_MISSING",
        message: `--hosts-file ${hostsFile} does not exist`,
        subject: hostsFile,
        kind: "usage",
      });
    }
    for (const line of text.split("\n")) {
      const host = line.replace(/#.*/, "").trim();
      if (host !== "") hosts.push(host);
    }
  }
  const duplicates = hosts.filter((h, i) => hosts.indexOf(h) !== i);
  if (duplicates.length > 0) throw new UsageError(`host given twice: ${[...new Set(duplicates)].join(", ")}`);
  for (const host of hosts) parseHost(host);
  if (args.user !== undefined) parseLogin(args.user);
  return hosts;
}

interface LoadedBundle {
  readonly path: string;
  readonly bytes: Buffer;
  readonly verified: VerifiedBundle;
  readonly temporary: boolean;
}

async function loadOrBuild(rt: CommandRuntime, args: SetupArgs, connect: KubeConnector): Promise<LoadedBundle> {
  const given = args.bundle;
  if (given !== undefined) {
    await checkBundleFile(rt.fs, given, "--bundle");
    const bytes = await rt.fs.readFile(given).catch((error: unknown) => {
      throw new AgentError({
        code: "BUNDLE_NOT_FOUND",
        message: `cannot read --bundle ${given}: ${(error as Error).message}`,
        subject: given,
        kind: "usage",
      });
    });
    return { path: given, bytes, verified: readBundle(bytes, given), temporary: false };
  }
  const built = await buildBundle(rt, args, connect);
  for (const warning of built.sources.warnings) rt.err(`warning: ${warning}\n`);
  const path = join(tmpdir(), `istio-vm-setup-${randomBytes(6).toString("hex")}.tgz`);
  await rt.fs.writeFileAtomic(path, built.archive, { mode: 0o600 });
  return { path, bytes: built.archive, verified: readBundle(built.archive, path), temporary: true };
}

function progressReporter(rt: CommandRuntime, hosts: readonly string[]) {
  const statuses = new Map<string, HostStatus>();
  let drawn = 0;
  let tick = 0;
  const draw = (): void => {
    const frame = renderFrame(
      hosts.map((h) => statuses.get(h)).filter((s): s is HostStatus => s !== undefined),
      { nowMs: rt.clock.monotonic(), tick: tick++, width: Math.max(40, (process.stderr.columns || 100) - 1) },
    );
    rt.err(redraw(drawn, frame));
    drawn = frame.length;
  };
  // A terminal animation frame, not a wait: nothing depends on when it fires.
  // eslint-disable-next-line no-restricted-globals
  const timer = rt.isTty ? setInterval(draw, 120) : undefined;
  return {
    onUpdate: (status: HostStatus): void => {
      const previous = statuses.get(status.host);
      statuses.set(status.host, status);
      if (!rt.isTty && (previous?.phase !== status.phase || previous.attempt !== status.attempt)) {
        if (status.phase !== "queued") rt.err(`${renderPlainLine(status, rt.clock.monotonic())}\n`);
      }
    },
    stop: (): void => {
      if (timer !== undefined) {
        clearInterval(timer);
        draw();
      }
    },
  };
}

export function renderSummary(results: readonly HostResult[]): string {
  const rows = results.map((r) => [
    r.host,
    r.ok ? "ok" : `FAILED (${r.step ?? "?"})`,
    String(r.attempts),
    `${(r.durationMs / 1000).toFixed(1)}s`,
    r.detail,
  ]);
  const failed = results.filter((r) => !r.ok).length;
  return (
    renderTable(["HOST", "RESULT", "ATTEMPTS", "TIME", "DETAIL"], rows) +
    (failed === 0 ? `all ${results.length} hosts set up\n` : `${failed} of ${results.length} hosts failed\n`)
  );
}

export function setupCommand(
  runtime: () => CommandRuntime,
  connect: KubeConnector = connectKube,
): CommandModule<object, SetupArgs> {
  return {
    command: "setup [hosts..]",
    describe: "Set up VMs over SSH (bundle, scp, sudo istio-vm install), many in parallel; or --cloud-init user-data",
    builder: (y) =>
      withBundleOptions(y)
        .positional("hosts", { type: "string", array: true, default: [] as string[], describe: "[user@]host …" })
        .option("bundle", {
          type: "string",
          describe: "use this bundle (from `istio-vm bundle`) instead of generating one",
          requiresArg: true,
        })
        .option("hosts-file", { type: "string", describe: "more hosts, one per line (# comments)", requiresArg: true })
        .option("ssh", { type: "string", default: "ssh", describe: "ssh command and options (like ISTIO_RUN)" })
        .option("scp", { type: "string", default: "scp", describe: "scp command and options (like ISTIO_CP)" })
        .option("user", {
          alias: "l",
          type: "string",
          describe: "login user (default: ~/.ssh/config's)",
          requiresArg: true,
        })
        .option("port", { alias: "p", type: "number", describe: "SSH port", requiresArg: true })
        .option("identity", { alias: "i", type: "string", describe: "private key file (ssh -i)", requiresArg: true })
        .option("parallel", { type: "number", default: 10, describe: "hosts set up at the same time" })
        .option("retries", {
          type: "number",
          default: 3,
          describe: "retries of a copy or remote run that failed in SSH itself (exit 255), with exponential backoff",
        })
        .option("retry-delay", { type: "string", default: "2s", describe: "first backoff delay; doubles each retry" })
        .option("connect-timeout", { type: "string", default: "10s", describe: "SSH ConnectTimeout" })
        .option("timeout", { type: "string", default: "10m", describe: "limit for each scp and remote run" })
        .option("remote-command", {
          type: "string",
          describe:
            "run this instead of the bootstrap + `sudo istio-vm install` ({bundle}: the copied bundle, {host}: the host)",
          requiresArg: true,
        })
        .option("multiplex", {
          type: "boolean",
          default: true,
          describe:
            "share one SSH connection per host between the steps (OpenSSH ControlMaster); --no-multiplex for an " +
            "--ssh/--scp that is not OpenSSH",
        })
        .option("cloud-init", {
          type: "boolean",
          default: false,
          describe: "print cloud-init user-data (write_files + runcmd) that installs the bundle at first boot",
        })
        .option("output", {
          alias: "o",
          type: "string",
          describe: "--cloud-init: write the user-data here (0600) instead of standard output",
          requiresArg: true,
        })
        .epilogue(
          "Per host: when the bundle has a .deb, ssh asks dpkg for the installed version (a host that has it gets the " +
            "bundle without the .deb); scp the bundle to the login directory; one ssh runs: if istio-vm is missing, the bundle's .deb " +
            "(checked against SHA256SUMS) is installed with sudo dpkg -i; then sudo -n istio-vm install (with --set " +
            "ISTIO_SVC_IP=<host> when HOST is an IP address and the bundle has none); then the copy is removed. The " +
            "steps of a host share one SSH connection, closed when the host is done. ssh " +
            "and scp run with BatchMode=yes (no prompts: use keys or an agent; passwordless sudo). Progress is live on " +
            "a terminal and plain lines otherwise; the table at the end has every host. Exit 1 if any host failed. " +
            "--cloud-init: user-data that does the same at first boot; check your provider's size limit (EC2: 16 KiB) " +
            "— a bundle with the .deb exceeds it, use --no-deb with the package already in the image.",
        )
        .example("$0 setup vm1 vm2 vm3 -n shop -s mysql-vm", "generate a bundle from the cluster, set up three VMs")
        .example("$0 setup --bundle vm.tgz --hosts-file fleet.txt --parallel 20 -l admin", "a fleet from a file")
        .example('$0 setup --bundle vm.tgz 10.0.0.5 --ssh "ssh -J bastion"', "through a jump host")
        .example("$0 setup --cloud-init --bundle vm.tgz -o user-data.yaml", "user-data for instance templates"),
    handler: async (args) => {
      const rt = runtime();
      const hosts = await hostList(rt, args);
      if (args["cloud-init"]) {
        if (hosts.length > 0)
          throw new UsageError("--cloud-init takes no hosts", "drop the hosts, or drop --cloud-init");
        if (args.output !== undefined) await checkOutputPath(rt.fs, args.output, "-o");
      } else {
        if (hosts.length === 0) throw new UsageError("name at least one host (or --hosts-file, or --cloud-init)");
        if (args.output !== undefined) throw new UsageError("-o/--output is for --cloud-init");
      }
      for (const [flag, value, min] of [
        ["--parallel", args.parallel, 1],
        ["--retries", args.retries, 0],
      ] as const) {
        if (!Number.isInteger(value) || value < min) throw new UsageError(`${flag} must be a whole number ≥ ${min}`);
      }
      if (args.port !== undefined && (!Number.isInteger(args.port) || args.port < 1 || args.port > 65535)) {
        throw new UsageError(`--port ${String(args.port)} is not a port`);
      }
      const retryBaseMs = parseDurationFlag("retry-delay", args["retry-delay"]);
      const connectMs = parseDurationFlag("connect-timeout", args["connect-timeout"]);
      const commandTimeoutMs = parseDurationFlag("timeout", args.timeout);
      const ssh = splitCommand("--ssh", args.ssh);
      const scp = splitCommand("--scp", args.scp);
      const bundle = await loadOrBuild(rt, args, connect);
      try {
        const debMember = bundle.verified.deb?.info.file;
        const bundleHasSvcIp = bundle.verified.sidecarSettings.some((s) => s.key === "ISTIO_SVC_IP");
        if (args["cloud-init"]) {
          const text = renderCloudInit({
            bundle: bundle.bytes,
            debMember,
            bundleHasSvcIp,
            comment: [
              `made by istio-vm ${programVersion()} setup --cloud-init (bundle sha256 ${sha256(bundle.bytes)})`,
              "contains the VM's credentials: keep it as secret as the bundle",
            ],
          });
          const over = exceededLimits(Buffer.byteLength(text));
          if (over.length > 0) {
            rt.err(
              `warning: the user-data is ${Math.ceil(Buffer.byteLength(text) / 1024)} KiB, over the limit of ${over.join(", ")}` +
                (debMember === undefined ? "\n" : "; bundle with --no-deb and put the package in the image\n"),
            );
          }
          if (args.output === undefined) rt.out(text);
          else {
            await rt.fs.writeFileAtomic(args.output, text, { mode: 0o600 });
            rt.err(`wrote ${args.output} (mode 0600, ${Buffer.byteLength(text)} bytes)\n`);
          }
          return;
        }
        let results: HostResult[];
        // Both are made once for the fleet and removed afterwards: the bundle without its .deb (hosts that have the
        // version get it) and the private directory of the shared connections' sockets.
        const made: string[] = [];
        try {
          let pkg: PackageSettings | undefined;
          const deb = bundle.verified.deb;
          if (deb !== undefined) {
            const slimBundlePath = join(tmpdir(), `istio-vm-setup-${randomBytes(6).toString("hex")}-no-deb.tgz`);
            const slim = renderBundle(planBundleWithoutDeb(bundle.verified), {
              mtimeMs: Date.parse(bundle.verified.info.createdAt),
              gzip: true,
            });
            await rt.fs.writeFileAtomic(slimBundlePath, slim, { mode: 0o600 });
            made.push(slimBundlePath);
            pkg = { name: deb.info.package, version: deb.info.version, slimBundlePath };
          }
          let controlDir: string | undefined;
          if (args.multiplex) {
            // Socket paths are short (see controlPath): a long TMPDIR falls back to /tmp.
            const base = tmpdir().length <= 48 ? tmpdir() : "/tmp";
            controlDir = join(base, `istio-vm-ssh-${randomBytes(6).toString("hex")}`);
            await rt.fs.mkdirp(controlDir, 0o700);
            made.push(controlDir);
          }
          const settings: SetupSettings = {
            ssh: {
              ssh,
              scp,
              ...(args.user === undefined ? {} : { user: args.user }),
              ...(args.port === undefined ? {} : { port: args.port }),
              ...(args.identity === undefined ? {} : { identity: args.identity }),
              connectTimeoutS: Math.max(1, Math.round(connectMs / 1000)),
              // Long enough to bridge the gap between two steps of a host, short enough to end a master whose
              // `ssh -O exit` never came (this process killed).
              ...(controlDir === undefined ? {} : { multiplex: { controlDir, persistS: 60 } }),
            },
            bundlePath: bundle.path,
            remoteName: `.istio-vm-bundle-${sha256(bundle.bytes).slice(0, 12)}`,
            debMember,
            ...(pkg === undefined ? {} : { package: pkg }),
            bundleHasSvcIp,
            ...(args["remote-command"] === undefined ? {} : { remoteCommand: args["remote-command"] }),
            parallel: args.parallel,
            retries: args.retries,
            retryBaseMs,
            commandTimeoutMs,
          };
          const progress = progressReporter(rt, hosts);
          try {
            results = await runSetup(hosts, settings, {
              runner: rt.runner,
              clock: rt.clock,
              onUpdate: progress.onUpdate,
            });
          } finally {
            progress.stop();
          }
        } finally {
          for (const path of made.reverse()) {
            // A master that did not exit leaves its socket: the directory stays, and the command's outcome with it.
            await rt.fs.remove(path).catch((error: unknown) => {
              rt.err(`warning: could not remove ${path}: ${(error as Error).message}\n`);
            });
          }
        }
        rt.out(
          rt.options.json
            ? renderJson({ ok: results.every((r) => r.ok), hosts: results.map((r) => ({ ...r, output: undefined })) })
            : renderSummary(results),
        );
        for (const failed of results.filter((r) => !r.ok)) {
          if (!rt.options.json && failed.output.trim() !== "") {
            rt.err(`--- ${failed.host} (${failed.step ?? "?"}):\n${failed.output.trimEnd()}\n`);
          }
        }
        if (results.some((r) => !r.ok)) rt.exitCode = 1;
      } finally {
        if (bundle.temporary) await rt.fs.remove(bundle.path);
      }
    },
  };
}
