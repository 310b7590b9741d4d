/**
 * A small Prometheus registry: counters and gauges with labels, rendered in the text exposition format
 * (version 0.0.4) by GET /metrics. Components register their metrics at construction.
 */
export type Labels = Readonly<Record<string, string>>;

interface Family {
  readonly name: string;
  readonly help: string;
  readonly type: "counter" | "gauge";
  readonly samples: Map<string, { labels: Labels; value: number }>;
  /** Gauges whose value is read at scrape time. */
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

export class MetricsRegistry {
  readonly #families = new Map<string, Family>();

  #family(name: string, help: string, type: Family["type"], collect?: () => number): Family {
    if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(name)) throw new Error(`invalid metric name ${name}`);
    const existing = this.#families.get(name);
    if (existing !== undefined) {
      if (existing.type !== type) throw new Error(`metric ${name} registered twice with different types`);
      return existing;
    }
    const family: Family = { name, help, type, samples: new Map(), ...(collect === undefined ? {} : { collect }) };
    this.#families.set(name, family);
    return family;
  }

  counter(name: string, help: string): Counter {
    const family = this.#family(name, help, "counter");
    return {
      inc(labels = {}, by = 1) {
        const key = labelKey(labels);
        const sample = family.samples.get(key) ?? { labels, value: 0 };
        sample.value += by;
        family.samples.set(key, sample);
      },
    };
  }

  gauge(name: string, help: string): Gauge {
    const family = this.#family(name, help, "gauge");
    return {
      set(value, labels = {}) {
        family.samples.set(labelKey(labels), { labels, value });
      },
    };
  }

  /** A gauge computed when scraped (process memory, seconds until expiry…). */
  gaugeFn(name: string, help: string, collect: () => number): void {
    this.#family(name, help, "gauge", collect);
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
