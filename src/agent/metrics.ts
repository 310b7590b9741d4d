/**
 * A small Prometheus registry: counters and gauges with labels, rendered in the text exposition format
 * (version 0.0.4) by GET /metrics. Components register their metrics at construction, declaring their label names,
 * so `describe()` lists every metric the agent can export (docs/metrics.md is checked against it).
 *
 * Names follow Prometheus' conventions (prometheus.io/docs/practices/naming): a counter ends in `_total`, nothing
 * else does; units are base units in the name (`_seconds`, `_bytes`). The registry refuses anything else.
 */
export type Labels = Readonly<Record<string, string>>;

export type MetricType = "counter" | "gauge";

/** One metric family as the registry declares it. */
export interface MetricDescription {
  readonly name: string;
  readonly type: MetricType;
  readonly help: string;
  /** The label names every sample carries (empty: one unlabelled sample). */
  readonly labels: readonly string[];
}

interface Family extends MetricDescription {
  readonly samples: Map<string, { labels: Labels; value: number }>;
  /** Metrics whose value is read at scrape time. */
  readonly collect?: () => number;
}

export interface Counter {
  inc(labels?: Labels, by?: number): void;
}
export interface Gauge {
  set(value: number, labels?: Labels): void;
}

function labelKey(labels: Labels): string {
  return JSON.stringify(Object.entries(labels).sort(([a], [b]) => a.localeCompare(b)));
}

function escapeLabel(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll('"', '\\"');
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

function sampleOf(family: Family, labels: Labels): { labels: Labels; value: number } {
  const names = Object.keys(labels).sort();
  if (names.join(",") !== family.labels.join(",")) {
    throw new Error(`metric ${family.name}: labels {${names.join(",")}} given, {${family.labels.join(",")}} declared`);
  }
  const key = labelKey(labels);
  let sample = family.samples.get(key);
  if (sample === undefined) {
    sample = { labels, value: 0 };
    family.samples.set(key, sample);
  }
  return sample;
}

export class MetricsRegistry {
  readonly #families = new Map<string, Family>();

  #family(
    name: string,
    help: string,
    type: MetricType,
    options: { labels?: readonly string[]; collect?: () => number } = {},
  ): Family {
    if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(name)) throw new Error(`invalid metric name ${name}`);
    if ((type === "counter") !== name.endsWith("_total")) {
      throw new Error(`metric ${name}: a counter's name ends in _total, and only a counter's`);
    }
    const labels = [...(options.labels ?? [])].sort();
    for (const label of labels) {
      if (!/^[a-zA-Z_][a-zA-Z0-9_]*$/.test(label) || label.startsWith("__")) {
        throw new Error(`metric ${name}: invalid label name ${label}`);
      }
    }
    const existing = this.#families.get(name);
    if (existing !== undefined) {
      if (existing.type !== type) throw new Error(`metric ${name} registered twice with different types`);
      if (existing.labels.join(",") !== labels.join(",")) {
        throw new Error(`metric ${name} registered twice with different labels`);
      }
      return existing;
    }
    const family: Family = {
      name,
      help,
      type,
      labels,
      samples: new Map(),
      ...(options.collect === undefined ? {} : { collect: options.collect }),
    };
    this.#families.set(name, family);
    return family;
  }

  /** A counter; every `inc` must give exactly the declared `labels`. */
  counter(name: string, help: string, labels: readonly string[] = []): Counter {
    const family = this.#family(name, help, "counter", { labels });
    return {
      inc(sampleLabels = {}, by = 1) {
        if (by < 0) throw new Error(`metric ${name}: a counter only goes up`);
        const sample = sampleOf(family, sampleLabels);
        sample.value += by;
      },
    };
  }

  /** A gauge; every `set` must give exactly the declared `labels`. */
  gauge(name: string, help: string, labels: readonly string[] = []): Gauge {
    const family = this.#family(name, help, "gauge", { labels });
    return {
      set(value, sampleLabels = {}) {
        sampleOf(family, sampleLabels).value = value;
      },
    };
  }

  /** A gauge computed when scraped (process memory, seconds until expiry…). */
  gaugeFn(name: string, help: string, collect: () => number): void {
    this.#family(name, help, "gauge", { collect });
  }

  /** A counter read when scraped from a source that only goes up (CPU time the kernel accounts). */
  counterFn(name: string, help: string, collect: () => number): void {
    this.#family(name, help, "counter", { collect });
  }

  /** Every registered metric, in registration order. */
  describe(): MetricDescription[] {
    return [...this.#families.values()].map(({ name, type, help, labels }) => ({ name, type, help, labels }));
  }

  render(): string {
    const lines: string[] = [];
    for (const family of this.#families.values()) {
      lines.push(`# HELP ${family.name} ${family.help.replaceAll("\\", "\\\\").replaceAll("\n", "\\n")}`);
      lines.push(`# TYPE ${family.name} ${family.type}`);
      if (family.collect !== undefined) {
        lines.push(`${family.name} ${formatValue(family.collect())}`);
        continue;
      }
      for (const { labels, value } of family.samples.values()) {
        const entries = Object.entries(labels);
        const labelText =
          entries.length === 0 ? "" : `{${entries.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`;
        lines.push(`${family.name}${labelText} ${formatValue(value)}`);
      }
    }
    return `${lines.join("\n")}\n`;
  }
}
