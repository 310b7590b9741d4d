/**
 * Errors a user can hit. Each carries a stable code, the thing involved (a path, URL, host…) and a hint on what to do.
 * Only `main.ts` maps them to exit codes: usage and configuration errors exit 2, everything else 1.
 */
export type ErrorKind = "usage" | "config" | "failure";

export interface AgentErrorOptions {
  readonly code: string;
  readonly message: string;
  readonly subject?: string;
  readonly hint?: string;
  readonly kind?: ErrorKind;
  readonly cause?: unknown;
}

export class AgentError extends Error {
  readonly code: string;
  readonly subject: string | undefined;
  readonly hint: string | undefined;
  readonly kind: ErrorKind;

  constructor(options: AgentErrorOptions) {
    super(options.message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "AgentError";
    this.code = options.code;
    this.subject = options.subject;
    this.hint = options.hint;
    this.kind = options.kind ?? "failure";
  }
}

export class UsageError extends AgentError {
  constructor(message: string, hint?: string) {
    super({ code: "USAGE", message, kind: "usage", ...(hint === undefined ? {} : { hint }) });
    this.name = "UsageError";
  }
}

/** One problem found while loading or validating configuration. */
export interface ConfigProblem {
  /** The variable or file the problem is about. */
  readonly subject: string;
  readonly message: string;
  /** `file:line` when the problem comes from a file. */
  readonly where?: string;
}

/** All configuration problems found at once: users fix them in one pass instead of one per run. */
export class ConfigError extends AgentError {
  readonly problems: readonly ConfigProblem[];

  constructor(problems: readonly ConfigProblem[], hint?: string) {
    super({
      code: "CONFIG_INVALID",
      message: `invalid configuration (${problems.length} problem${problems.length === 1 ? "" : "s"}):\n${problems
        .map((p) => `  - ${p.where === undefined ? "" : `${p.where}: `}${p.subject}: ${p.message}`)
        .join("\n")}`,
      kind: "config",
      hint: hint ?? "fix the values above; `istio-vm config` shows every variable and where its value came from",
    });
    this.name = "ConfigError";
    this.problems = problems;
  }
}

/**
 * An error class whose instances carry a machine-readable `reason` beside the message (a CA call's failure kind, a
 * rejected certificate's, a store conflict's): `class CaCallError extends reasonError<CaFailureReason>("CaCallError")
 * {}`. `name` is given, not taken from the class, so minified bundles keep it.
 */
export function reasonError<R>(name: string) {
  return class extends Error {
    readonly reason: R;
    constructor(reason: R, message: string) {
      super(message);
      this.name = name;
      this.reason = reason;
    }
  };
}

/** A message for any thrown value, without leaking stack traces into user output. */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
