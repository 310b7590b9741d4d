import type { MetricsRegistry } from "./metrics.js";

/** The standard process_* metrics Prometheus clients export, so dashboards built for them work unchanged. */
export function registerProcessMetrics(metrics: MetricsRegistry, startedAtMs: number): void {
  metrics.gaugeFn("process_resident_memory_bytes", "Resident memory size in bytes.", () => process.memoryUsage.rss());
  metrics.gaugeFn("process_start_time_seconds", "Start time of the process since the Unix epoch in seconds.", () =>
    Math.floor(startedAtMs / 1000),
  );
  metrics.counterFn("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", () => {
    const usage = process.cpuUsage();
    return (usage.user + usage.system) / 1e6;
  });
  metrics.gaugeFn(
    "nodejs_heap_size_used_bytes",
    "Process heap size used from Node.js in bytes.",
    () => process.memoryUsage().heapUsed,
  );
}
