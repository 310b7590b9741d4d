import { describe, expect, it } from "vitest";
import { MetricsRegistry } from "./metrics.js";

describe("MetricsRegistry", () => {
  it("renders counters, gauges and collected gauges in the Prometheus text format", () => {
    const m = new MetricsRegistry();
    const renewals = m.counter("istio_vm_cert_renewals_total", "Certificate renewals by result.", ["result"]);
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

  it("rejects invalid names and a name registered with two types or two label sets", () => {
    const m = new MetricsRegistry();
    expect(() => m.counter("bad-name_total", "x")).toThrow("invalid metric name");
    expect(() => m.counter("x_total", "x", ["__reserved"])).toThrow("invalid label name");
    m.counter("x_total", "x");
    expect(() => {
      m.counterFn("x_total", "x", () => 1);
    }).not.toThrow();
    expect(() => m.counter("x_total", "x", ["reason"])).toThrow("different labels");
    m.gauge("y", "y");
    expect(() => {
      m.counterFn("y", "y", () => 1);
    }).toThrow("_total");
  });

  it("follows Prometheus naming: a counter ends in _total, a gauge never does", () => {
    const m = new MetricsRegistry();
    expect(() => m.counter("istio_vm_renewals", "x")).toThrow("ends in _total");
    expect(() => {
      m.counterFn("process_cpu_seconds", "x", () => 1);
    }).toThrow("ends in _total");
    expect(() => m.gauge("istio_vm_renewals_total", "x")).toThrow("ends in _total");
    expect(() => {
      m.gaugeFn("process_cpu_seconds_total", "x", () => 1);
    }).toThrow("ends in _total");
  });

  it("renders a counter read at scrape time as a counter", () => {
    const m = new MetricsRegistry();
    m.counterFn("process_cpu_seconds_total", "CPU seconds.", () => 1.5);
    expect(m.render()).toBe(
      "# HELP process_cpu_seconds_total CPU seconds.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n",
    );
  });

  it("takes exactly the declared labels on every sample, and a counter never goes down", () => {
    const m = new MetricsRegistry();
    const failures = m.counter("f_total", "f", ["reason"]);
    expect(() => {
      failures.inc();
    }).toThrow("labels {} given, {reason} declared");
    expect(() => {
      failures.inc({ reason: "x", extra: "y" });
    }).toThrow("declared");
    expect(() => {
      failures.inc({ reason: "x" }, -1);
    }).toThrow("only goes up");
    const info = m.gauge("info", "i", ["version", "profile"]);
    info.set(1, { profile: "istiod", version: "1" });
    expect(() => {
      m.gauge("ready", "r").set(1, { component: "x" });
    }).toThrow("declared");
    expect(m.describe()).toEqual([
      { name: "f_total", type: "counter", help: "f", labels: ["reason"] },
      { name: "info", type: "gauge", help: "i", labels: ["profile", "version"] },
      { name: "ready", type: "gauge", help: "r", labels: [] },
    ]);
  });
});
