/**
 * The inputs of `register`/`deregister`, checked before any request: `--ports` (`port` or `name:port`, names guessed
 * as the original istioctl did), `--labels`/`--annotations` (`key=value`), the Service name and the VM's address.
 */
import { isIP } from "node:net";
import { UsageError } from "../platform/errors.js";

export interface PortSpec {
  readonly name: string;
  readonly port: number;
}

const GUESSED_NAMES: Readonly<Record<number, string>> = { 80: "http", 443: "https", 3306: "mysql", 8080: "http" };

/** The original's table: 80 http, 443 https, 3306 mysql, 8080 http, else the number itself. */
export function guessPortName(port: number): string {
  return GUESSED_NAMES[port] ?? String(port);
}

const PORT_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/**
 * `[name:]port` items. A guessed name that another port already uses gets the port appended (`http-8080`): the
 * original guessed `http` for both 80 and 8080, and the API server rejects duplicate port names.
 */
export function parsePortSpecs(items: readonly string[]): PortSpec[] {
  const specs: { name: string | undefined; port: number; item: string }[] = [];
  const problems: string[] = [];
  for (const item of items) {
    const m = /^(?:([^:]+):)?(\d+)$/.exec(item.trim());
    const port = Number(m?.[2]);
    if (m === null || !Number.isInteger(port) || port < 1 || port > 65535) {
      problems.push(`'${item}' is not [name:]port with a port 1–65535`);
      continue;
    }
    const name = m[1];
    if (name !== undefined && (!PORT_NAME.test(name) || name.length > 63)) {
      problems.push(`port name '${name}' must be lower-case letters, digits and '-' (at most 63)`);
      continue;
    }
    if (specs.some((s) => s.port === port)) {
      problems.push(`port ${port} is given twice`);
      continue;
    }
    specs.push({ name, port, item });
  }
  if (problems.length > 0) throw new UsageError(problems.join("; "), "ports are e.g. 3306, mysql:3306 or http:8080");
  if (specs.length === 0)
    throw new UsageError("at least one port is needed", "e.g. istio-vm register mysqldb 10.0.0.5 3306");
  const explicit = new Set(specs.flatMap((s) => (s.name === undefined ? [] : [s.name])));
  if (explicit.size !== specs.filter((s) => s.name !== undefined).length) {
    throw new UsageError("two ports have the same name", "port names must be unique within a Service");
  }
  const used = new Set(explicit);
  return specs.map((s) => {
    if (s.name !== undefined) return { name: s.name, port: s.port };
    let name = guessPortName(s.port);
    if (used.has(name)) name = `${name}-${s.port}`;
    used.add(name);
    return { name, port: s.port };
  });
}

/**
 * `k=v,k2=v2` items (each flag may be repeated). An item without `=` is a key with an empty value, as in the
 * original.
 */
export function parseKeyValues(items: readonly string[], what: string): Record<string, string> {
  const result: Record<string, string> = {};
  for (const item of items.flatMap((i) => i.split(","))) {
    const trimmed = item.trim();
    if (trimmed === "") continue;
    const eq = trimmed.indexOf("=");
    const key = eq === -1 ? trimmed : trimmed.slice(0, eq);
    const value = eq === -1 ? "" : trimmed.slice(eq + 1);
    if (
      !/^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/.test(
        key,
      )
    ) {
      throw new UsageError(
        `${what} key '${key}' is not a valid Kubernetes key`,
        `${what} are given as key=value,key2=value2`,
      );
    }
    result[key] = value;
  }
  return result;
}

export interface RegistrationInput {
  readonly service: string;
  readonly namespace: string;
  readonly ip: string;
  readonly ports: readonly PortSpec[];
  readonly labels: Readonly<Record<string, string>>;
  readonly annotations: Readonly<Record<string, string>>;
  readonly serviceAccount: string;
}

export function validateTarget(service: string, ip: string): void {
  if (!/^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/.test(service)) {
    throw new UsageError(
      `'${service}' is not a valid Service name`,
      "lower-case letters, digits and '-', starting with a letter, at most 63 characters",
    );
  }
  if (isIP(ip) === 0)
    throw new UsageError(
      `'${ip}' is not an IPv4 or IPv6 address`,
      "give the VM's address, the ISTIO_SVC_IP of its sidecar.env",
    );
}
