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
}

/** `command: "register <svc> <ip> [ports..]"` → svc, ip, ports. Positionals are not flags. */
export function positionalNames(command: string | readonly string[] | undefined): Set<string> {
  const text = Array.isArray(command) ? command.join(" ") : typeof command === "string" ? command : "";
  return new Set([...text.matchAll(/[<[]([\w-]+)(?:\.\.)?[>\]]/g)].map((m) => m[1] ?? ""));
}

function flagName(key: string): string {
  return key.length === 1 ? `-${key}` : `--${key}`;
}

function requireValues(y: Argv, positionals: ReadonlySet<string>): void {
  const table = (y as unknown as { getOptions(): OptionTable }).getOptions();
  const booleans = new Set(table.boolean);
  const valued = [...new Set([...table.string, ...table.number, ...table.array])].filter(
    (key) => !booleans.has(key) && !positionals.has(key),
  );
  if (valued.length > 0) y.requiresArg(valued);
  for (const key of table.number) {
    if (positionals.has(key)) continue;
    y.coerce(key, (value: unknown) => {
      const values = Array.isArray(value) ? (value as unknown[]) : [value];
      for (const v of values) {
        if (typeof v === "number" && !Number.isFinite(v)) {
          throw new UsageError(`${flagName(key)} needs a number`, `e.g. ${flagName(key)} 3`);
        }
      }
      return value;
    });
  }
}

const trails = new WeakMap<object, string[]>();

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
      if (name !== undefined) trails.set(y, [...commandTrail(y), name]);
      const built: unknown =
        typeof original === "function" ? original(y) : original === undefined ? y : y.options(original);
      // A builder may return the parser or nothing (it then configured `y` in place).
      requireValues((built ?? y) as Argv, positionals);
      return (built ?? y) as Argv<U>;
    },
  };
}
