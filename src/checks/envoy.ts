/** The Envoy check: Envoy's admin `/ready` on 127.0.0.1:ENVOY_ADMIN_PORT answers 200 (`LIVE`). */
import { HttpError } from "../platform/http.js";
import type { Check, CheckDeps } from "./check.js";
import { fail, pass } from "./check.js";

export const ENVOY_CHECK = "envoy";

export function envoyCheck(deps: CheckDeps): Check {
  return {
    name: ENVOY_CHECK,
    description: "Envoy's admin /ready answers 200 LIVE",
    async run(signal) {
      const url = `http://127.0.0.1:${deps.values.ENVOY_ADMIN_PORT}/ready`;
      try {
        const res = await deps.http.request({ url, timeoutMs: deps.timeoutMs, signal });
        const state = res.body.toString("utf8").trim();
        if (res.status === 200)
          return pass(ENVOY_CHECK, `Envoy ready (${state || "200"})`, [`GET ${url}: 200 ${state}`]);
        return fail(
          ENVOY_CHECK,
          `Envoy not ready: HTTP ${res.status} ${state}`,
          state === "PRE_INITIALIZING" || state === "INITIALIZING"
            ? "Envoy is waiting for its first configuration from Pilot: see the discovery check"
            : state === "DRAINING"
              ? "Envoy is draining (a stop or hot restart is in progress): check `journalctl -u istio-vm-agent`"
              : "Envoy's admin answers but is not ready: `journalctl -u istio-vm-agent` shows why",
          [`GET ${url}: ${res.status} ${state}`],
        );
      } catch (error) {
        const code = error instanceof HttpError ? error.code : "ERROR";
        return fail(
          ENVOY_CHECK,
          `no Envoy admin at 127.0.0.1:${deps.values.ENVOY_ADMIN_PORT} (${code})`,
          code === "ECONNREFUSED"
            ? "Envoy is not running: `systemctl status istio-vm-agent` and `journalctl -u istio-vm-agent` (is ENVOY_BINARY installed?)"
            : "Envoy's admin port does not answer: `journalctl -u istio-vm-agent`",
          [`GET ${url}: ${(error as Error).message}`],
        );
      }
    },
  };
}
