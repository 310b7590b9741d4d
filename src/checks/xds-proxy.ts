/**
 * The xDS proxy check (istiod profile): the agent's xDS socket exists with the mode that keeps other users out
 * (0600: whoever connects speaks to istiod with this VM's identity), and the agent says its upstream stream to
 * istiod answered CDS and LDS. The state comes from the agent's own readiness page (/healthz/ready on
 * 127.0.0.1:STATUS_PORT, the `xds-proxy:` line): a second ADS stream from the check would compete with Envoy's on
 * the proxy, and the agent knows why its stream ended (istiod's identity check, an unreachable address).
 */
import { HttpError } from "../platform/http.js";
import { usesXdsProxy, xdsProxySocketPath } from "../xds/proxy-socket.js";
import type { Check, CheckDeps } from "./check.js";
import { fail, pass, skip } from "./check.js";

export const XDS_PROXY_CHECK = "xds-proxy";

/** What to do about a not-ready proxy, from the reason the agent gives. */
function hintFor(summary: string, values: CheckDeps["values"]): string {
  if (/PERMISSION_DENIED/.test(summary)) {
    return (
      `istiod's identity check refused the stream: the certificate's SPIFFE namespace and service account must equal ` +
      `POD_NAMESPACE=${values.POD_NAMESPACE} and SERVICE_ACCOUNT=${values.SERVICE_ACCOUNT} (see the certificate check)`
    );
  }
  if (/UNAUTHENTICATED/.test(summary)) {
    return "istiod did not accept the workload certificate: see the certificate and ca checks";
  }
  if (/unreachable|connecting/.test(summary)) {
    return `istiod at ${values.DISCOVERY_ADDRESS.host}:${values.DISCOVERY_ADDRESS.port} does not answer: see the discovery check`;
  }
  if (/waiting for Envoy|no Envoy stream/.test(summary)) {
    return "Envoy has not connected to the agent's xDS socket: see the envoy check and `journalctl -u istio-vm-agent`";
  }
  return "`journalctl -u istio-vm-agent` shows the xDS proxy's log";
}

export function xdsProxyCheck(deps: CheckDeps): Check {
  const v = deps.values;
  return {
    name: XDS_PROXY_CHECK,
    description: "the agent proxies Envoy's xDS to istiod: its socket is 0600 and istiod answered CDS and LDS",
    async run(signal) {
      if (!usesXdsProxy(v)) return skip(XDS_PROXY_CHECK, "legacy profile: Envoy dials Pilot itself (no xDS proxy)");
      const socket = xdsProxySocketPath(v);
      const st = await deps.fs.stat(socket);
      if (st === undefined) {
        return fail(
          XDS_PROXY_CHECK,
          `no xDS proxy socket at ${socket}`,
          "the agent is not running, or runs without Envoy (ISTIO_AGENT_COMPONENTS): `systemctl status istio-vm-agent`",
        );
      }
      const mode = st.mode & 0o777;
      const details = [`${socket}: mode 0${mode.toString(8)}, uid ${st.uid}`];
      if (st.isDirectory || mode !== 0o600) {
        return fail(
          XDS_PROXY_CHECK,
          `${socket} is not a socket of mode 0600`,
          "restart the agent (`systemctl restart istio-vm-agent`), which recreates it; something else changed it",
          details,
        );
      }
      const url = `http://127.0.0.1:${v.STATUS_PORT}/healthz/ready`;
      let body: string;
      try {
        const res = await deps.http.request({ url, timeoutMs: deps.timeoutMs, signal });
        body = res.body.toString("utf8");
      } catch (error) {
        const code = error instanceof HttpError ? error.code : "ERROR";
        return fail(
          XDS_PROXY_CHECK,
          `the agent's status endpoint does not answer (${code})`,
          "the agent is not running: `systemctl status istio-vm-agent`",
          [...details, `GET ${url}: ${(error as Error).message}`],
        );
      }
      const line = /^xds-proxy: (ready|not ready): (.*)$/m.exec(body);
      if (line === null) {
        return fail(
          XDS_PROXY_CHECK,
          "the agent reports no xDS proxy",
          "the agent runs without Envoy (ISTIO_AGENT_COMPONENTS) or is still starting: `systemctl status istio-vm-agent`",
          [...details, `GET ${url}: no xds-proxy line`],
        );
      }
      const summary = line[2] ?? "";
      details.push(`GET ${url}: ${line[0]}`);
      if (line[1] === "ready") return pass(XDS_PROXY_CHECK, summary, details);
      return fail(XDS_PROXY_CHECK, summary, hintFor(summary, v), details);
    },
  };
}
