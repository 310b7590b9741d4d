/**
 * Envoy's command line for one hot-restart epoch (pure), as pilot-agent built it (docs/protocols.md):
 * `-c <dir>/envoy-rev<N>.json --restart-epoch N --drain-time-s D --parent-shutdown-time-s P --service-cluster C
 * --service-node ID --base-id B -l LEVEL --log-format F` (`--service-cluster` on the legacy profile only).
 */
import type { ConfigValues } from "../config/registry.js";

export type EnvoyCommandConfig = Pick<
  ConfigValues,
  | "ENVOY_DRAIN_DURATION"
  | "ENVOY_PARENT_SHUTDOWN_DURATION"
  | "ENVOY_BASE_ID"
  | "ENVOY_LOG_LEVEL"
  | "ISTIO_AGENT_FLAGS"
  | "ISTIO_SERVICE"
  | "ISTIO_CONTROL_PLANE"
  | "ENVOY_XDS_API"
>;

export interface EnvoyCommandInput {
  readonly config: EnvoyCommandConfig;
  readonly epoch: number;
  readonly bootstrapPath: string;
  readonly serviceNode: string;
}

export interface EnvoyCommand {
  readonly args: readonly string[];
  readonly drainSeconds: number;
  readonly parentShutdownSeconds: number;
  readonly logLevel: string;
  /** Settings that were corrected or ignored, for the log. */
  readonly warnings: readonly string[];
}

/**
 * The log format the supervisor parses: the level first, so each line reaches the journal with its priority
 * (`[warning][upstream] [source/…:123] message`). journald stamps the time itself.
 */
export const ENVOY_LOG_FORMAT = "[%l][%n] [%g:%#] %v";

const ENVOY_LEVELS = new Set(["trace", "debug", "info", "warning", "warn", "error", "critical", "off"]);

/**
 * The original recipe's ISTIO_AGENT_FLAGS carried pilot-agent flags; only `--proxyLogLevel LEVEL` (or `=LEVEL`) means
 * anything for Envoy itself. Returns the level, if any, and what was ignored.
 */
export function parseAgentFlags(flags: string): { logLevel?: string; ignored: string[] } {
  const words = flags.split(/\s+/).filter((w) => w !== "");
  const ignored: string[] = [];
  let logLevel: string | undefined;
  for (let i = 0; i < words.length; i++) {
    const word = words[i] ?? "";
    const m = /^--?proxyLogLevel(?:=(.*))?$/.exec(word);
    if (m === null) {
      ignored.push(word);
      continue;
    }
    const value = m[1] ?? words[++i];
    if (value !== undefined && ENVOY_LEVELS.has(value)) logLevel = value;
    else ignored.push(`${word}${m[1] === undefined && value !== undefined ? ` ${value}` : ""}`);
  }
  return logLevel === undefined ? { ignored } : { logLevel, ignored };
}

export function envoyCommand(input: EnvoyCommandInput): EnvoyCommand {
  const { config } = input;
  const warnings: string[] = [];
  const drainSeconds = Math.max(1, Math.ceil(config.ENVOY_DRAIN_DURATION / 1000));
  let parentShutdownSeconds = Math.max(1, Math.ceil(config.ENVOY_PARENT_SHUTDOWN_DURATION / 1000));
  if (parentShutdownSeconds <= drainSeconds) {
    // The parent must outlive its drain, or connections are cut before they could finish (Envoy's own advice).
    warnings.push(
      `ENVOY_PARENT_SHUTDOWN_DURATION (${parentShutdownSeconds}s) must exceed ENVOY_DRAIN_DURATION (${drainSeconds}s); using ${drainSeconds + 1}s`,
    );
    parentShutdownSeconds = drainSeconds + 1;
  }
  const flags = parseAgentFlags(config.ISTIO_AGENT_FLAGS);
  if (flags.ignored.length > 0) {
    warnings.push(`ISTIO_AGENT_FLAGS: only --proxyLogLevel is honoured; ignored: ${flags.ignored.join(" ")}`);
  }
  const logLevel = flags.logLevel ?? config.ENVOY_LOG_LEVEL;
  const args = [
    "-c",
    input.bootstrapPath,
    "--restart-epoch",
    String(input.epoch),
    "--drain-time-s",
    String(drainSeconds),
    "--parent-shutdown-time-s",
    String(parentShutdownSeconds),
    // pilot-agent 0.x passed the service cluster on the command line; Istio 1.x puts it only in the bootstrap's
    // node.cluster (pkg/envoy/proxy.go), where Istio's rules derive it (src/xds/node-block.ts), and a flag would
    // override that.
    ...(config.ISTIO_CONTROL_PLANE === "legacy" ? ["--service-cluster", config.ISTIO_SERVICE] : []),
    "--service-node",
    input.serviceNode,
    // v1 and v2 cluster names carry service names (`out.<host>|<port names>`, `outbound|<port>||<host>`):
    // pilot-agent 0.3–0.8 raised Envoy's 60-character limit to 189, the length Pilot truncates names to
    // (proxy/envoy/config.go, 0.8 pkg/bootstrap/config.go MaxClusterNameLength). Envoy 1.11 made it a no-op.
    ...(config.ENVOY_XDS_API === "v1" || config.ENVOY_XDS_API === "v2" ? ["--max-obj-name-len", "189"] : []),
    "--base-id",
    String(config.ENVOY_BASE_ID),
    "-l",
    logLevel,
    // --log-format came with Envoy 1.6; the v1 configuration also runs on older Envoy, which rejects unknown flags.
    ...(config.ENVOY_XDS_API === "v1" ? [] : ["--log-format", ENVOY_LOG_FORMAT]),
  ];
  return { args, drainSeconds, parentShutdownSeconds, logLevel, warnings };
}

/** Journal priority of one line of Envoy's output in ENVOY_LOG_FORMAT; other lines (panics, stdout) are info. */
export function envoyLinePriority(line: string): "error" | "warn" | "info" | "debug" {
  const m = /^\[(trace|debug|info|warning|error|critical|off)\]/.exec(line);
  switch (m?.[1]) {
    case "critical":
    case "error":
      return "error";
    case "warning":
      return "warn";
    case "debug":
    case "trace":
      return "debug";
    default:
      return "info";
  }
}
