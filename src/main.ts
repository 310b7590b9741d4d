/**
 * The composition root: argv → command. Builds the real adapters (every port of src/platform/ports.ts, and the
 * notify socket) once, and is the only place that maps errors to exit codes: 0 ok, 1 failure, 2 usage or
 * configuration error.
 */
import type * as Os from "node:os";
import type { CommandModule } from "yargs";
import type { CommandEntry } from "./cli/commands.js";
import { COMMANDS, commandName, requestedCommand } from "./cli/commands.js";
import type { CommandContext, CommandRuntime } from "./cli/context.js";
import { commandTrail, recordArguments, usageHint, withFlagValues } from "./cli/flag-values.js";
import type { ChildSpawner } from "./platform/child.js";
import { createChildSpawner } from "./platform/child.js";
import { systemClock } from "./platform/clock.js";
import { nodeDnsClient } from "./platform/dns.js";
import { AgentError, ConfigError, UsageError, describeError } from "./platform/errors.js";
import { loadBuiltin, nodeFileSystem } from "./platform/fs.js";
import { nodeHttpClient } from "./platform/http.js";
import { nodeLinkFileSystem } from "./platform/links.js";
import type { LogLevel } from "./platform/logger.js";
import { LOG_LEVELS, createLogger, redact, stderrIsJournal } from "./platform/logger.js";
import { createNotifier } from "./platform/notify.js";
import { nodeProcessRunner } from "./platform/process.js";
import { nodeTcpConnector } from "./platform/tcp.js";
import { nodeTlsProber } from "./platform/tls.js";
import { systemUsers } from "./platform/users.js";
import { programVersion } from "./version.js";

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/**
 * What --help lists for a command that is not running: its name and description. Its options, handler and imports
 * stay unloaded (`requestedCommand` picks the one command whose module is loaded).
 */
function listedOnly(entry: CommandEntry): CommandModule<object, object> {
  return {
    command: entry.command,
    describe: entry.describe,
    handler: () => {
      throw new Error(`command ${commandName(entry)} ran without its module`);
    },
  };
}

/**
 * yargs 17 renders the running command's whole help text right after starting its handler (`cacheHelpMessage`, for
 * showing it on a later failure): a fifth of `istio-vm config`'s own time. istio-vm never shows help on a failure
 * (`.fail` below turns every failure into one line and a hint), so that text is never used; --help renders its own.
 */
function skipHelpCache(parser: object): void {
  const internals = parser as { getInternalMethods?: () => { getUsageInstance(): { cacheHelpMessage?: unknown } } };
  const usage = internals.getInternalMethods?.().getUsageInstance();
  if (usage !== undefined && typeof usage.cacheHelpMessage === "function") usage.cacheHelpMessage = () => undefined;
}

function exitCodeFor(error: unknown): number {
  if (error instanceof AgentError) return error.kind === "failure" ? EXIT_FAILURE : EXIT_USAGE;
  return EXIT_FAILURE;
}

/** yargs' own messages, said the way ours are. */
function usageMessage(message: string): string {
  const missing = /^Not enough arguments following: (\S+)$/.exec(message);
  if (missing?.[1] !== undefined) {
    const flag = missing[1].length === 1 ? `-${missing[1]}` : `--${missing[1]}`;
    return `${flag} needs a value`;
  }
  return message.replace(/\n\s*/g, " ");
}

function renderError(error: unknown, options: { json: boolean; debug: boolean }): string {
  if (options.json) {
    const e =
      error instanceof AgentError
        ? {
            code: error.code,
            message: error.message,
            subject: error.subject,
            hint: error.hint,
            ...(error instanceof ConfigError ? { problems: error.problems } : {}),
          }
        : { code: "INTERNAL", message: describeError(error) };
    return redact(JSON.stringify({ error: e }, null, 2)) + "\n";
  }
  let text = `istio-vm: ${describeError(error)}\n`;
  if (error instanceof AgentError && error.hint !== undefined) text += `  hint: ${error.hint}\n`;
  // A stack trace helps whoever debugs istio-vm, never the user who made a mistake: only on request.
  if (!(error instanceof AgentError)) text += "  hint: run again with --log-level debug for the details\n";
  if (options.debug && error instanceof Error && error.stack !== undefined) text += `${error.stack}\n`;
  return redact(text);
}

/** `--version`, also as JSON; handled before yargs so that it works with any command and any other flag. */
function versionRequested(argv: readonly string[]): boolean {
  const end = argv.indexOf("--");
  return (end === -1 ? argv : argv.slice(0, end)).includes("--version");
}

export async function main(argv: readonly string[], context: CommandContext): Promise<number> {
  let runtime: CommandRuntime | undefined;
  const wantsJson = argv.includes("--json") || argv.includes("--json=true");
  if (versionRequested(argv)) {
    context.out(wantsJson ? JSON.stringify({ version: programVersion() }) + "\n" : `${programVersion()}\n`);
    return EXIT_OK;
  }
  const getRuntime = (): CommandRuntime => {
    if (runtime === undefined) throw new Error("command runtime used before the arguments were parsed");
    return runtime;
  };
  const requested = requestedCommand(argv);
  const [{ default: yargs }, factory] = await Promise.all([import("yargs"), requested?.load()]);
  let parser = yargs([...argv])
    .scriptName("istio-vm")
    .usage(
      "$0 <command> [options]\n\nJoins this VM to an Istio mesh on Kubernetes (mesh expansion): admin commands that " +
        "generate what a VM needs, and the agent that runs on the VM.",
    )
    .option("json", { type: "boolean", default: false, global: true, describe: "print results as JSON" })
    .option("log-level", {
      choices: LOG_LEVELS,
      global: true,
      describe: "log verbosity (default: ISTIO_VM_LOG_LEVEL, else info)",
    })
    .middleware((args) => {
      const logLevel = args["log-level"];
      const journal = stderrIsJournal(context.env);
      runtime = {
        ...context,
        options: { json: args.json, logLevel },
        logger: createLogger({
          level: logLevel ?? (context.env["ISTIO_VM_LOG_LEVEL"] as LogLevel | undefined) ?? "info",
          format: journal ? "journal" : "plain",
          write: context.err,
        }),
        exitCode: EXIT_OK,
      };
    });
  recordArguments(parser, argv);
  const known = new Set(COMMANDS.map(commandName));
  for (const entry of COMMANDS) {
    parser = parser.command(
      entry === requested && factory !== undefined ? withFlagValues(factory(getRuntime)) : listedOnly(entry),
    );
  }
  // The bash script comes from yargs, and asks `istio-vm --get-yargs-completions …` for each completion. yargs' own
  // completion command prints the script whatever else is on the line (even an unknown flag), so it is registered
  // hidden under another name, and `completion` is an ordinary strict command that prints the same script.
  parser = parser.completion("__completion-script", false).command({
    command: "completion",
    describe: "print a bash completion script (the package installs it)",
    handler: () => {
      // yargs 17 takes ($0, cmd) here (cmd names the command in the script's install comment); its types omit them.
      (parser as unknown as { showCompletionScript($0?: string, cmd?: string): void }).showCompletionScript(
        "istio-vm",
        "completion",
      );
    },
  });
  skipHelpCache(parser);
  parser = parser
    .demandCommand(1, "name a command")
    .strict()
    .recommendCommands()
    .version(false)
    .option("version", { type: "boolean", global: false, describe: "show the version (with --json: as JSON)" })
    .help()
    .alias("h", "help")
    .wrap(Math.min(120, process.stdout.columns || 100))
    .exitProcess(false)
    .fail((message: string | null, error: Error | undefined) => {
      if (error instanceof AgentError) throw error;
      // yargs reports its own validation failures either as a message or as a YError (e.g. a flag without value).
      if (error === undefined || error.name === "YError") {
        const text = usageMessage(message ?? error?.message ?? "invalid usage");
        const trail = commandTrail(parser);
        throw new UsageError(text, usageHint(trail.length > 0 ? trail.join(" ") : argv.find((a) => known.has(a))));
      }
      throw error;
    });
  try {
    await parser.parseAsync();
    return runtime?.exitCode ?? EXIT_OK;
  } catch (error) {
    const json = runtime?.options.json ?? wantsJson;
    const debug = (runtime?.options.logLevel ?? logLevelIn(argv)) === "debug";
    (json ? context.out : context.err)(renderError(error, { json, debug }));
    return exitCodeFor(error);
  }
}

/** `--log-level debug` as given, for errors raised before yargs has parsed the arguments. */
function logLevelIn(argv: readonly string[]): string | undefined {
  const i = argv.indexOf("--log-level");
  if (i !== -1) return argv[i + 1];
  return argv.find((a) => a.startsWith("--log-level="))?.slice("--log-level=".length);
}

/** The real outside world. Nothing here loads a Node built-in before a command uses it (`istio-vm --version`). */
export function realContext(): CommandContext {
  let spawner: ChildSpawner | undefined;
  return {
    env: process.env,
    fs: nodeFileSystem,
    links: nodeLinkFileSystem,
    runner: nodeProcessRunner,
    spawner: () => (spawner ??= createChildSpawner()),
    clock: systemClock,
    dns: nodeDnsClient,
    http: nodeHttpClient,
    tls: nodeTlsProber,
    tcp: nodeTcpConnector,
    users: systemUsers(process.env, nodeFileSystem, nodeProcessRunner),
    uid: process.getuid?.(),
    hostname: () => (loadBuiltin("node:os") as typeof Os).hostname(),
    notifier: () =>
      createNotifier({
        env: process.env,
        logger: createLogger({ level: "warn", format: "plain", write: (s) => process.stderr.write(s) }),
      }),
    out: (text) => process.stdout.write(text),
    err: (text) => process.stderr.write(text),
    isTty: process.stdout.isTTY,
  };
}
