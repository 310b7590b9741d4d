/**
 * A WorkloadGroup's `probe` (istio/api `networking/v1alpha3/workload_group.proto` ReadinessProbe, protobuf JSON),
 * checked and completed with the defaults istio-agent fills in (istio/istio `pkg/istio-agent/health/health_check.go`
 * fillInDefaults): thresholds and timeout at least 1 (0 means the default 1), period 10 s, HTTP path `/`, scheme
 * `http`, host `localhost`. It travels as the ProxyConfig's `readinessProbe` (PROXY_CONFIG in cluster.env, as
 * istioctl puts it into the mesh config's defaultConfig); `istio-vm bundle --probe` and the agent's health
 * component both read it through `parseReadinessProbe`, so a probe the agent cannot run is refused where it is given.
 * The gRPC method of newer Istio releases is not supported (docs/not-supported.md).
 */

export type ProbeMethod =
  | {
      readonly kind: "httpGet";
      readonly path: string;
      readonly port: number;
      readonly host: string;
      readonly scheme: "http" | "https";
      readonly headers: readonly { readonly name: string; readonly value: string }[];
    }
  | { readonly kind: "tcpSocket"; readonly host: string; readonly port: number }
  | { readonly kind: "exec"; readonly command: readonly string[] };

export interface ReadinessProbe {
  readonly method: ProbeMethod;
  readonly initialDelaySeconds: number;
  readonly periodSeconds: number;
  readonly timeoutSeconds: number;
  readonly successThreshold: number;
  readonly failureThreshold: number;
}

const METHODS = ["httpGet", "tcpSocket", "exec"] as const;
const NUMBERS = [
  "initialDelaySeconds",
  "periodSeconds",
  "timeoutSeconds",
  "successThreshold",
  "failureThreshold",
] as const;

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** protobuf JSON accepts both the proto name and the JSON name of a field. */
function field(object: Record<string, unknown>, jsonName: string): unknown {
  if (jsonName in object) return object[jsonName];
  return object[jsonName.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)];
}

/** The probe, or every problem with it at once (each a short phrase naming the field). */
export function parseReadinessProbe(raw: unknown): { probe: ReadinessProbe } | { problems: string[] } {
  if (!isRecord(raw)) return { problems: ['the probe must be an object such as {"tcpSocket":{"port":8080}}'] };
  const problems: string[] = [];
  const numbers: Record<string, number> = {};
  for (const name of NUMBERS) {
    const value = field(raw, name) ?? 0;
    if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > 86_400) {
      problems.push(`${name} must be a whole number 0–86400`);
    } else numbers[name] = value;
  }
  const given = METHODS.filter((m) => field(raw, m) !== undefined && field(raw, m) !== null);
  if (field(raw, "grpc") !== undefined)
    problems.push("the grpc probe method is not supported (httpGet, tcpSocket, exec)");
  if (given.length !== 1) problems.push(`exactly one of ${METHODS.join(", ")} is needed (got ${given.length})`);
  const port = (value: unknown, where: string): number => {
    if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > 65535) {
      problems.push(`${where}.port must be a port 1–65535`);
      return 0;
    }
    return value;
  };
  const text = (value: unknown, where: string): string => {
    if (value === undefined || value === null) return "";
    if (typeof value !== "string") problems.push(`${where} must be a string`);
    return typeof value === "string" ? value : "";
  };
  let method: ProbeMethod | undefined;
  const kind = given[0];
  const rawSpec = kind === undefined ? undefined : field(raw, kind);
  const spec = isRecord(rawSpec) ? rawSpec : undefined;
  if (kind !== undefined && spec === undefined) problems.push(`${kind} must be an object`);
  else if (kind === "httpGet" && spec !== undefined) {
    const scheme = text(field(spec, "scheme"), "httpGet.scheme").toLowerCase() || "http";
    if (scheme !== "http" && scheme !== "https") problems.push("httpGet.scheme must be HTTP or HTTPS");
    const rawHeaders = field(spec, "httpHeaders") ?? [];
    const headers = Array.isArray(rawHeaders)
      ? rawHeaders.map((h: unknown, i) => ({
          name: text(isRecord(h) ? h["name"] : undefined, `httpGet.httpHeaders[${i}].name`),
          value: text(isRecord(h) ? h["value"] : undefined, `httpGet.httpHeaders[${i}].value`),
        }))
      : [];
    if (!Array.isArray(rawHeaders)) problems.push("httpGet.httpHeaders must be a list of {name, value}");
    method = {
      kind,
      path: text(field(spec, "path"), "httpGet.path") || "/",
      port: port(field(spec, "port"), "httpGet"),
      host: text(field(spec, "host"), "httpGet.host") || "localhost",
      scheme: scheme === "https" ? "https" : "http",
      headers,
    };
  } else if (kind === "tcpSocket" && spec !== undefined) {
    method = {
      kind,
      host: text(field(spec, "host"), "tcpSocket.host") || "localhost",
      port: port(field(spec, "port"), "tcpSocket"),
    };
  } else if (kind === "exec" && spec !== undefined) {
    const command = field(spec, "command");
    if (!Array.isArray(command) || command.length === 0 || !command.every((c) => typeof c === "string")) {
      problems.push("exec.command must be a non-empty list of strings");
    } else method = { kind, command: command };
  }
  if (problems.length > 0 || method === undefined) return { problems };
  const orOne = (n: number | undefined): number => (n === undefined || n === 0 ? 1 : n);
  return {
    probe: {
      method,
      initialDelaySeconds: numbers["initialDelaySeconds"] ?? 0,
      periodSeconds:
        numbers["periodSeconds"] === undefined || numbers["periodSeconds"] === 0 ? 10 : numbers["periodSeconds"],
      timeoutSeconds: orOne(numbers["timeoutSeconds"]),
      successThreshold: orOne(numbers["successThreshold"]),
      failureThreshold: orOne(numbers["failureThreshold"]),
    },
  };
}

/** A one-line description for logs and `STATUS=`: `tcp localhost:8080`, `http http://localhost:8080/healthz`, `exec …`. */
export function describeProbe(probe: ReadinessProbe): string {
  const m = probe.method;
  switch (m.kind) {
    case "httpGet":
      return `http ${m.scheme}://${m.host.includes(":") ? `[${m.host}]` : m.host}:${m.port}${m.path}`;
    case "tcpSocket":
      return `tcp ${m.host.includes(":") ? `[${m.host}]` : m.host}:${m.port}`;
    case "exec":
      return `exec ${m.command.join(" ")}`;
  }
}
