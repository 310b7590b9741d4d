/**
 * Health reports on the agent's xDS proxy (istiod profile with Envoy): each report rides the proxy's one upstream
 * stream to istiod, which carries Envoy's node (AUTO_REGISTER_GROUP included), and the latest is sent again first on
 * every new stream, as istio-agent's xDS proxy does (istio/istio pkg/istio-agent/xds_proxy.go sendHealthRequest).
 * istiod then sees one connection per VM. Where no proxy runs, the given fallback (the agent's own stream) is used.
 */
import { HEALTH_INFO_TYPE_URL } from "../xds/protos.js";
import type { HealthPorts } from "./component.js";
import type { HealthReportSink } from "./report.js";
import { UNHEALTHY_CODE } from "./report.js";

export function upstreamHealthSink(fallback: NonNullable<HealthPorts["sink"]>): NonNullable<HealthPorts["sink"]> {
  return (deps, values, signal) => {
    const channel = deps.xds?.upstream();
    if (channel === undefined) return fallback(deps, values, signal);
    deps.logger.child("health").info("health reports on the xDS proxy's upstream stream to istiod");
    const sink: HealthReportSink = {
      report(report) {
        channel.report({
          typeUrl: HEALTH_INFO_TYPE_URL,
          ...(report.healthy ? {} : { errorDetail: { code: UNHEALTHY_CODE, message: report.message } }),
        });
      },
    };
    const running = new Promise<void>((resolve) => {
      if (signal.aborted) resolve();
      else
        signal.addEventListener(
          "abort",
          () => {
            resolve();
          },
          { once: true },
        );
    });
    return { sink, running };
  };
}
