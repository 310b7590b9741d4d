/**
 * Health reports from the agent to istiod (docs/protocols.md, "Auto-registration and health"): each change of the
 * probe's state becomes a `HealthInformation` DiscoveryRequest, with no error_detail when healthy and
 * `{code: 13, message}` when not. Where the requests go is behind `HealthReportSink`; `LatestHealthReport` keeps the
 * last one and writes it on every stream attached to it, now and on each reconnect, as istio-agent's xDS proxy does
 * (`pkg/istio-agent/xds_proxy.go` sendHealthCheckRequest). Today the agent's own ADS stream carries it
 * (src/health/component.ts); an xDS proxy can attach its upstream stream the same way (`AdsOutbox`).
 */
import type { AdsOutbox, AdsRequest } from "../xds/ads-watch.js";
import { HEALTH_INFO_TYPE_URL } from "../xds/protos.js";

export type HealthReport = { readonly healthy: true } | { readonly healthy: false; readonly message: string };

/** Where health changes go. */
export interface HealthReportSink {
  report(report: HealthReport): void;
}

/** google.rpc.Code INTERNAL, what istio-agent puts into an unhealthy report. */
export const UNHEALTHY_CODE = 13;

export function healthRequest(report: HealthReport): AdsRequest {
  return {
    version_info: "",
    resource_names: [],
    type_url: HEALTH_INFO_TYPE_URL,
    response_nonce: "",
    ...(report.healthy ? {} : { error_detail: { code: UNHEALTHY_CODE, message: report.message } }),
  };
}

export class LatestHealthReport implements HealthReportSink, AdsOutbox {
  #latest: AdsRequest | undefined;
  readonly #streams = new Set<(request: AdsRequest) => void>();

  report(report: HealthReport): void {
    this.#latest = healthRequest(report);
    for (const send of this.#streams) send(this.#latest);
  }

  attach(send: (request: AdsRequest) => void): () => void {
    this.#streams.add(send);
    if (this.#latest !== undefined) send(this.#latest);
    return () => {
      this.#streams.delete(send);
    };
  }
}
