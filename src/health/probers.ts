/**
 * One run of a WorkloadGroup probe, as istio-agent's probers do it (istio/istio
 * `pkg/istio-agent/health/health_probers.go`): httpGet is healthy on a status in [200, 400) (HTTPS without
 * certificate verification, `User-Agent: istio-probe/1.0` unless given, a `Host` header sets the host), tcpSocket
 * when the connection opens, exec on exit status 0. Each is bounded by the probe's timeout and never throws: a
 * failure is an unhealthy outcome with the reason, which becomes the report's message.
 */
import type { ProbeMethod } from "../config/readiness-probe.js";
import { describeError } from "../platform/errors.js";
import type { HttpClient } from "../platform/http.js";
import type { ProcessRunner } from "../platform/process.js";
import type { TcpConnector } from "../platform/tcp.js";
import type { ProbeOutcome } from "./checker.js";

export interface ProberPorts {
  readonly http: HttpClient;
  readonly tcp: TcpConnector;
  readonly runner: ProcessRunner;
}

/** Each probe run's bound: the probe's timeout, and the agent stopping. */
export interface ProbeRunOptions {
  readonly timeoutMs: number;
  readonly signal: AbortSignal;
}

function hostPort(host: string, port: number): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}

export async function runProbe(
  method: ProbeMethod,
  ports: ProberPorts,
  options: ProbeRunOptions,
): Promise<ProbeOutcome> {
  try {
    switch (method.kind) {
      case "tcpSocket":
        await ports.tcp(method.host, method.port, options.timeoutMs, options.signal);
        return { healthy: true };
      case "httpGet": {
        const headers: Record<string, string> = {};
        for (const h of method.headers)
          headers[h.name] = headers[h.name] === undefined ? h.value : `${headers[h.name] ?? ""}, ${h.value}`;
        if (!Object.keys(headers).some((k) => k.toLowerCase() === "user-agent"))
          headers["User-Agent"] = "istio-probe/1.0";
        const path = method.path.startsWith("/") ? method.path : `/${method.path}`;
        const response = await ports.http.request({
          url: `${method.scheme}://${hostPort(method.host, method.port)}${path}`,
          headers,
          timeoutMs: options.timeoutMs,
          signal: options.signal,
          ...(method.scheme === "https" ? { insecureSkipVerify: true } : {}),
        });
        if (response.status >= 200 && response.status < 400) return { healthy: true };
        return { healthy: false, message: `status code was not from [200,400), bad code ${response.status}` };
      }
      case "exec": {
        const [command = "", ...args] = method.command;
        const result = await ports.runner.run(command, args, { timeoutMs: options.timeoutMs, signal: options.signal });
        if (result.timedOut)
          return { healthy: false, message: `command timeout exceeded: ${method.command.join(" ")}` };
        if (result.code === 0) return { healthy: true };
        const tail = result.stderr.trim().split("\n").pop() ?? "";
        const status = result.code === null ? `signal: ${result.signal ?? "?"}` : `exit status ${result.code}`;
        return { healthy: false, message: tail === "" ? status : `${status}: ${tail}` };
      }
    }
  } catch (error) {
    return { healthy: false, message: describeError(error) };
  }
}

/**
 * Envoy's part of the probe: istio-agent puts its Envoy readiness probe before the application's
 * (`NewWorkloadHealthChecker`: AggregateProber{EnvoyProber, app}), so a VM whose Envoy is not serving is reported
 * unhealthy too. Envoy's admin `/ready` answers 200 `LIVE` once it serves, 503 with its state before.
 */
export async function envoyReady(http: HttpClient, adminPort: number, options: ProbeRunOptions): Promise<ProbeOutcome> {
  try {
    const response = await http.request({
      url: `http://127.0.0.1:${adminPort}/ready`,
      timeoutMs: options.timeoutMs,
      signal: options.signal,
    });
    if (response.status === 200) return { healthy: true };
    const state = response.body.toString("utf8").trim();
    return { healthy: false, message: `Envoy proxy is NOT ready: server is not live, current state is: ${state}` };
  } catch (error) {
    return { healthy: false, message: `Envoy proxy is NOT ready: ${describeError(error)}` };
  }
}
