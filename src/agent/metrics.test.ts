import { describe, expect, it } from "vitest";
import { MetricsRegistry } from "./metrics.js";

describe("MetricsRegistry", () => {
  it("renders counters, gauges and collected gauges in the Prometheus text format", () => {
    const m = new MetricsRegistry();
    const renewals = m.counter("istio_vm_cert_renewals_total", "Certificate renewals by result.");
    renewals.inc({ result: "ok" });
    renewals.inc({ result: "ok" });
    renewals.inc({ result: 'denied "x"' });
    m.gauge("istio_vm_envoy_epoch", "Current Envoy epoch.").set(3);
    m.gaugeFn("istio_vm_cert_expiry_seconds", "Seconds until expiry.", () => 42.5);
    expect(m.render()).toBe(
      [
        "# HELP istio_vm_cert_renewals_total Certificate renewals by result.",
        "# TYPE istio_vm_cert_renewals_total counter",
        'istio_vm_cert_renewals_total{result="ok"} 2',
        'istio_vm_cert_renewals_total{result="denied \\"x\\""} 1',
        "# HELP istio_vm_envoy_epoch Current Envoy epoch.",
        "# TYPE istio_vm_envoy_epoch gauge",
        "istio_vm_envoy_epoch 3",
        "# HELP istio_vm_cert_expiry_seconds Seconds until expiry.",
        "# TYPE istio_vm_cert_expiry_seconds gauge",
        "istio_vm_cert_expiry_seconds 42.5",
        "",
      ].join("\n"),
    );
  });

  it("rejects invalid names and a name registered with two types", () => {
    const m = new MetricsRegistry();
    expect(() => m.counter("bad-name", "x")).toThrow("invalid metric name");
    m.counter("x_total", "x");
    expect(() => m.gauge("x_total", "x")).toThrow("different types");
  });
});
