/**
 * Every flag that takes a value must be given one, and a number flag must be given a number: yargs on its own turns
 * `--output` (no value) into "", `--port` into "not given" (the default) and `--port abc` into NaN, and the command
 * then runs with a value the user never chose. Applied to every command by `main.ts` (and to subcommands where a
 * command registers them), so a new option is covered without anyone remembering to.
 */
import type { Argv, CommandModule } from "yargs";
import { UsageError } from "../platform/errors.js";

/** The parts of yargs' option table read here (yargs 17 `getOptions()`; its typings do not declare it). */
interface OptionTable {
  readonly string: readonly string[];
  readonly number: readonly string[];
  readonly array: readonly string[];
  readonly boolean: readonly string[];
  readonly alias: Readonly<Record<string, readonly string[]>>;
  readonly choices: Readonly<Record<string, readonly unknown[]>>;
  readonly default: Readonly<Record<string, unknown>>;
}

/** `command: "register <svc> <ip> [ports..]"` → svc, ip, ports. Positionals are not flags. */
export function positionalNames(command: string | readonly string[] | undefined): Set<string> {
  const text = Array.isArray(command) ? command.join(" ") : typeof command === "string" ? command : "";
  return new Set([...text.matchAll(/[<[]([\w-]+)(?:\.\.)?[>\]]/g)].map((m) => m[1] ?? ""));
}

function flagName(key: string): string {
  return key.length === 1 ? `-${key}` : `--${key}`;
}

const rawArguments = new WeakMap<object, readonly string[]>();

/** The argv being parsed, for the checks yargs cannot make from its parsed result. */
export function recordArguments(parser: object, argv: readonly string[]): void {
  rawArguments.set(parser, argv);
}

/**
 * yargs fills a list flag that has a default with that default when the flag is given without a value (`--listen`
 * alone means 127.0.0.1), so those are found in argv itself: the flag, then nothing or another flag.
 */
function listFlagsWithoutValue(argv: readonly string[], keys: readonly string[], table: OptionTable): string[] {
  const end = argv.indexOf("--");
  const args = end === -1 ? argv : argv.slice(0, end);
  const missing: string[] = [];
  for (const key of keys) {
    const names = new Set([key, ...(table.alias[key] ?? [])].map(flagName));
    args.forEach((arg, i) => {
      const next = args[i + 1];
      if (names.has(arg) && (next === undefined || (next.startsWith("-") && !/^-\d/.test(next)))) missing.push(arg);
    });
  }
  return missing;
}

function requireValues(y: Argv, positionals: ReadonlySet<string>, hint: string): void {
  const table = (y as unknown as { getOptions(): OptionTable }).getOptions();
  const booleans = new Set(table.boolean);
  const flag = (key: string): boolean => !booleans.has(key) && !positionals.has(key);
  const valued = [...new Set([...table.string, ...table.number, ...table.array, ...Object.keys(table.choices)])].filter(
    flag,
  );
  if (valued.length > 0) y.requiresArg(valued);
  const listsWithDefaults = table.array.filter((key) => flag(key) && table.default[key] !== undefined);
  const argv = rawArguments.get(y);
  if (argv !== undefined && listsWithDefaults.length > 0) {
    y.check(() => {
      const missing = listFlagsWithoutValue(argv, listsWithDefaults, table)[0];
      if (missing !== undefined) throw new UsageError(`${missing} needs a value`, hint);
      return true;
    });
  }
  for (const key of table.number) {
    if (!flag(key)) continue;
    y.coerce(key, (value: unknown) => {
      const values = Array.isArray(value) ? (value as unknown[]) : [value];
      for (const v of values) {
        if (typeof v === "number" && !Number.isFinite(v)) throw new UsageError(`${flagName(key)} needs a number`, hint);
      }
      return value;
    });
  }
}

const trails = new WeakMap<object, string[]>();

/** The hint of every usage error: where to read how the command is used. */
export function usageHint(command: string | undefined): string {
  return command === undefined || command === ""
    ? "run `istio-vm --help` for the list of commands"
    : `see \`istio-vm ${command} --help\``;
}

/**
 * The commands entered so far while parsing, outermost first (`certs`, `renew`): the builders of the commands wrapped
 * by `withFlagValues` record them on the parser they are given (yargs gives every builder the same parser).
 */
export function commandTrail(parser: object): readonly string[] {
  return trails.get(parser) ?? [];
}

/** The command with its builder followed by `requireValues`; the handler and the rest are unchanged. */
export function withFlagValues<T, U>(module: CommandModule<T, U>): CommandModule<T, U> {
  const positionals = positionalNames(module.command);
  const first: string | undefined = typeof module.command === "string" ? module.command : module.command?.[0];
  const name = first?.split(" ")[0];
  const original = module.builder;
  return {
    ...module,
    builder: (y: Argv<T>) => {
      const trail = [...commandTrail(y), ...(name === undefined ? [] : [name])];
      trails.set(y, trail);
      const built: unknown =
        typeof original === "function" ? original(y) : original === undefined ? y : y.options(original);
      // A builder may return the parser or nothing (it then configured `y` in place).
      requireValues((built ?? y) as Argv, positionals, usageHint(trail.join(" ")));
      return (built ?? y) as Argv<U>;
    },
  };
}
