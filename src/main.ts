/**
 * The composition root: argv → command. Builds the real adapters (file system, processes, clock, notify socket),
 * and is the only place that maps errors to exit codes: 0 ok, 1 failure, 2 usage or configuration error.
 */
import yargs from "yargs";
import type { CommandModule } from "yargs";
import { agentCommand } from "./cli/agent.js";
import { bundleCommand } from "./cli/bundle.js";
import { certsCommand } from "./cli/certs.js";
import { checkCommand } from "./cli/check.js";
import { clusterEnvCommand } from "./cli/cluster-env.js";
import { configCommand } from "./cli/config.js";
import { devCommand } from "./cli/dev.js";
import { dnsmasqCommand } from "./cli/dnsmasq.js";
import { envoyCommandModule } from "./cli/envoy.js";
import { deregisterCommand, registerCommand } from "./cli/register.js";
import type { CommandContext, CommandRuntime } from "./cli/context.js";
import { installCommand } from "./cli/install.js";
import { iptablesCommand } from "./cli/iptables.js";
import { setupCommand } from "./cli/setup.js";
import { systemClock } from "./platform/clock.js";
import { AgentError, UsageError, describeError } from "./platform/errors.js";
import { nodeFileSystem } from "./platform/fs.js";
import type { LogLevel } from "./platform/logger.js";
import { LOG_LEVELS, createLogger, redact, stderrIsJournal } from "./platform/logger.js";
import { createNotifier } from "./platform/notify.js";
import { nodeProcessRunner } from "./platform/process.js";
import { programVersion } from "./version.js";

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

// Each factory has its own argument type; yargs only needs the module shape here.
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- heterogeneous command argument types
type CommandFactory = (runtime: () => CommandRuntime) => CommandModule<object, any>;

/** Every implemented command; a command appears in --help only once it works. */
const COMMANDS: readonly CommandFactory[] = [
  agentCommand,
  configCommand,
  iptablesCommand,
  envoyCommandModule,
  clusterEnvCommand,
  dnsmasqCommand,
  certsCommand,
  registerCommand,
  deregisterCommand,
  devCommand,
  checkCommand,
  bundleCommand,
  installCommand,
  setupCommand,
];

function exitCodeFor(error: unknown): number {
  if (error instanceof AgentError) return error.kind === "failure" ? EXIT_FAILURE : EXIT_USAGE;
  return EXIT_FAILURE;
}

function renderError(error: unknown, json: boolean): string {
  if (json) {
    const e =
      error instanceof AgentError
        ? { code: error.code, message: error.message, subject: error.subject, hint: error.hint }
        : { code: "INTERNAL", message: describeError(error) };
    return redact(JSON.stringify({ error: e }, null, 2)) + "\n";
  }
  let text = `istio-vm: ${describeError(error)}\n`;
  if (error instanceof AgentError && error.hint !== undefined) text += `  hint: ${error.hint}\n`;
  if (!(error instanceof AgentError) && error instanceof Error && error.stack !== undefined) {
    text += `${error.stack}\n`;
  }
  return redact(text);
}

export async function main(argv: readonly string[], context: CommandContext): Promise<number> {
  let runtime: CommandRuntime | undefined;
  const wantsJson = argv.includes("--json");
  const getRuntime = (): CommandRuntime => {
    if (runtime === undefined) throw new Error("command runtime used before the arguments were parsed");
    return runtime;
  };
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
  for (const factory of COMMANDS) parser = parser.command(factory(getRuntime));
  // `istio-vm completion` prints yargs' bash script; the script asks `istio-vm --get-yargs-completions …`.
  parser = parser.completion("completion", "print a bash completion script (the package installs it)");
  parser = parser
    .demandCommand(1, "name a command")
    .strict()
    .recommendCommands()
    .version(programVersion())
    .help()
    .alias("h", "help")
    .wrap(Math.min(120, process.stdout.columns || 100))
    .exitProcess(false)
    .fail((message: string | null, error: Error | undefined) => {
      throw error ?? new UsageError(message ?? "invalid usage", "run `istio-vm --help` for the list of commands");
    });
  try {
    await parser.parseAsync();
    return runtime?.exitCode ?? EXIT_OK;
  } catch (error) {
    const json = runtime?.options.json ?? wantsJson;
    (json ? context.out : context.err)(renderError(error, json));
    return exitCodeFor(error);
  }
}

/** The real outside world. */
export function realContext(): CommandContext {
  return {
    env: process.env,
    fs: nodeFileSystem,
    runner: nodeProcessRunner,
    clock: systemClock,
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
