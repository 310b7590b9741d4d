import type { Clock } from "../platform/clock.js";
import type { FileSystem } from "../platform/fs.js";
import type { LogLevel, Logger } from "../platform/logger.js";
import type { Notifier } from "../platform/notify.js";
import type { ProcessRunner } from "../platform/process.js";

/** Everything a command needs from the outside world; `main.ts` builds the real one, tests build their own. */
export interface CommandContext {
  readonly env: NodeJS.ProcessEnv;
  readonly fs: FileSystem;
  readonly runner: ProcessRunner;
  readonly clock: Clock;
  readonly notifier: () => Notifier;
  /** Writes to standard output (results). */
  readonly out: (text: string) => void;
  /** Writes to standard error (progress, warnings). */
  readonly err: (text: string) => void;
  readonly isTty: boolean;
}

/** Global options every command receives. */
export interface GlobalOptions {
  readonly json: boolean;
  readonly logLevel: LogLevel | undefined;
}

export interface CommandRuntime extends CommandContext {
  readonly options: GlobalOptions;
  readonly logger: Logger;
  /** The exit code the command wants (0 unless it reports a failure without throwing, e.g. a failed check). */
  exitCode: number;
}
