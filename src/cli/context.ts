import type { LogLevel, Logger } from "../platform/logger.js";
import type { Notifier } from "../platform/notify.js";
import type { SystemPorts } from "../platform/ports.js";

/**
 * Everything a command needs from the outside world: every port (src/platform/ports.ts) and the terminal. `main.ts`
 * builds the real one, once; tests build theirs with the fakes of test/fakes/ports.ts.
 */
export interface CommandContext extends SystemPorts {
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
