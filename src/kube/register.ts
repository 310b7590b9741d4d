/**
 * `register` / `deregister` (istioctl register of Istio 0.2–0.8, docs/protocols.md): a VM service becomes a
 * selector-less Service plus an Endpoints object holding the VM's IP; Pilot scans Endpoints for the proxy's IP. The
 * original appended the IP blindly (registering twice listed it twice) and had no retry on concurrent updates; here
 * the planners are pure and idempotent, and the executor re-reads and retries on resourceVersion conflicts.
 *
 * For the istiod profile a `WorkloadEntry` (networking.istio.io/v1) can be written as well: it carries the VM's
 * identity (service account) and labels, named as istiod names auto-registered entries (`<name>-<ip sanitised>`).
 */
import { isIP } from "node:net";
import type { Clock } from "../platform/clock.js";
import { AgentError, UsageError } from "../platform/errors.js";
import type { KubeClient } from "./client.js";
import { KubeApiError, isConflict, isNotFound } from "./client.js";
import { corePath, groupPath } from "./profile.js";

export const SERVICE_ACCOUNT_ANNOTATION = "alpha.istio.io/kubernetes-serviceaccounts";
export const WORKLOAD_ENTRY_GROUP = "networking.istio.io/v1";

// ── inputs ─────────────────────────────────────────────────────────────────────────────────

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

// ── Kubernetes object shapes (only what is read or written) ───────────────────────────────────

export interface ObjectMeta {
  name: string;
  namespace?: string;
  resourceVersion?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  [key: string]: unknown;
}

export interface EndpointAddress {
  ip: string;
  [key: string]: unknown;
}

export interface EndpointPort {
  name?: string;
  port: number;
  protocol?: string;
  [key: string]: unknown;
}

export interface EndpointSubset {
  addresses?: EndpointAddress[];
  notReadyAddresses?: EndpointAddress[];
  ports?: EndpointPort[];
  [key: string]: unknown;
}

export interface EndpointsObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  subsets?: EndpointSubset[];
  [key: string]: unknown;
}

export interface ServiceObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  spec?: Record<string, unknown>;
  [key: string]: unknown;
}

export interface WorkloadEntryObject {
  apiVersion: string;
  kind: string;
  metadata: ObjectMeta;
  spec: {
    address: string;
    labels: Record<string, string>;
    serviceAccount: string;
    ports: Record<string, number>;
  };
}

// ── pure planners ────────────────────────────────────────────────────────────────────────────

function objectAnnotations(input: RegistrationInput): Record<string, string> {
  return { ...input.annotations, [SERVICE_ACCOUNT_ANNOTATION]: input.serviceAccount };
}

function meta(input: RegistrationInput, name: string): ObjectMeta {
  const m: ObjectMeta = { name, namespace: input.namespace };
  if (Object.keys(input.labels).length > 0) m.labels = { ...input.labels };
  m.annotations = objectAnnotations(input);
  return m;
}

/** The selector-less Service: no selector, so Kubernetes leaves its Endpoints to us and still assigns a ClusterIP. */
export function planService(input: RegistrationInput): ServiceObject {
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: meta(input, input.service),
    spec: { ports: input.ports.map((p) => ({ name: p.name, port: p.port, protocol: "TCP", targetPort: p.port })) },
  };
}

export function planEmptyEndpoints(input: RegistrationInput): EndpointsObject {
  return { apiVersion: "v1", kind: "Endpoints", metadata: meta(input, input.service), subsets: [] };
}

function samePortNumbers(subset: EndpointSubset, ports: readonly PortSpec[]): boolean {
  const have = new Set((subset.ports ?? []).map((p) => p.port));
  const want = new Set(ports.map((p) => p.port));
  return have.size === want.size && [...want].every((p) => have.has(p));
}

export function describeSubset(subset: EndpointSubset): string {
  const addresses = (subset.addresses ?? []).map((a) => a.ip).join(" ");
  const ports = (subset.ports ?? []).map((p) => `{${p.name ?? ""} ${p.port}}`).join(" ");
  return `{addresses [${addresses}] ports [${ports}]}`;
}

/** The original's count: the sum over subsets of ports × addresses. */
export function endpointCount(endpoints: EndpointsObject): number {
  return (endpoints.subsets ?? []).reduce((n, s) => n + (s.ports ?? []).length * (s.addresses ?? []).length, 0);
}

export interface EndpointsPlan {
  readonly endpoints: EndpointsObject;
  readonly changed: boolean;
  /** Extra occurrences of the IP removed from the matching subsets. */
  readonly duplicatesRemoved: number;
  /** Subsets whose port numbers equal the requested set (the original expected at most one). */
  readonly matchingSubsets: number;
  readonly messages: readonly string[];
}

/**
 * Adds `ip` to the subset whose port numbers equal the requested set (or a new subset), so that afterwards it is
 * listed exactly once across those subsets. Subsets for other port sets are left alone.
 */
export function planAddAddress(current: EndpointsObject, ip: string, ports: readonly PortSpec[]): EndpointsPlan {
  const endpoints = structuredClone(current);
  const subsets = endpoints.subsets ?? [];
  const messages: string[] = [];
  const matching = subsets.filter((s) => samePortNumbers(s, ports));
  if (matching.length > 1) messages.push(`Unexpected match in ${matching.length} subsets`);
  let duplicatesRemoved = 0;
  let kept = false;
  for (const subset of matching) {
    const filtered: EndpointAddress[] = [];
    for (const address of subset.addresses ?? []) {
      if (address.ip !== ip) filtered.push(address);
      else if (kept) duplicatesRemoved++;
      else {
        kept = true;
        filtered.push(address);
      }
    }
    subset.addresses = filtered;
  }
  const first = matching[0];
  let changed = duplicatesRemoved > 0;
  if (duplicatesRemoved > 0)
    messages.push(`Removed ${duplicatesRemoved} duplicate entr${duplicatesRemoved === 1 ? "y" : "ies"} of ${ip}`);
  if (kept) {
    messages.push(`IP ${ip} is already registered with this ports list; nothing to add`);
  } else if (first !== undefined) {
    (first.addresses ??= []).push({ ip });
    changed = true;
    messages.push(`Found matching ports list in existing subset ${describeSubset(first)}`);
  } else {
    const subset: EndpointSubset = {
      addresses: [{ ip }],
      ports: ports.map((p) => ({ ...(p.name === "" ? {} : { name: p.name }), port: p.port, protocol: "TCP" })),
    };
    subsets.push(subset);
    changed = true;
    messages.push(`No pre existing exact matching ports list found, created new subset ${describeSubset(subset)}`);
  }
  endpoints.subsets = subsets.filter((s) => (s.addresses ?? []).length > 0 || (s.notReadyAddresses ?? []).length > 0);
  return { endpoints, changed, duplicatesRemoved, matchingSubsets: matching.length, messages };
}

/** Removes every occurrence of `ip` (ready or not) from every subset and drops subsets left empty. */
export function planRemoveAddress(
  current: EndpointsObject,
  ip: string,
): { endpoints: EndpointsObject; removed: number } {
  const endpoints = structuredClone(current);
  let removed = 0;
  const strip = (list: EndpointAddress[] | undefined): EndpointAddress[] | undefined => {
    if (list === undefined) return undefined;
    const kept = list.filter((a) => a.ip !== ip);
    removed += list.length - kept.length;
    return kept;
  };
  const subsets: EndpointSubset[] = [];
  for (const subset of endpoints.subsets ?? []) {
    const addresses = strip(subset.addresses);
    const notReady = strip(subset.notReadyAddresses);
    if ((addresses ?? []).length === 0 && (notReady ?? []).length === 0) continue;
    const next: EndpointSubset = { ...subset };
    if (addresses === undefined || addresses.length === 0) delete next.addresses;
    else next.addresses = addresses;
    if (notReady === undefined || notReady.length === 0) delete next.notReadyAddresses;
    else next.notReadyAddresses = notReady;
    subsets.push(next);
  }
  endpoints.subsets = subsets;
  return { endpoints, removed };
}

/** `<name>-<ip with . and : replaced by ->`, as istiod names auto-registered entries; at most 253 characters. */
export function workloadEntryName(service: string, ip: string): string {
  return `${service}-${ip.replace(/[.:]/g, "-")}`.slice(0, 253).replace(/-+$/, "");
}

export function planWorkloadEntry(input: RegistrationInput): WorkloadEntryObject {
  const labels = { app: input.service, ...input.labels };
  return {
    apiVersion: WORKLOAD_ENTRY_GROUP,
    kind: "WorkloadEntry",
    metadata: { name: workloadEntryName(input.service, input.ip), namespace: input.namespace, labels: { ...labels } },
    spec: {
      address: input.ip,
      labels,
      serviceAccount: input.serviceAccount,
      ports: Object.fromEntries(input.ports.map((p) => [p.name, p.port])),
    },
  };
}

// ── executors ────────────────────────────────────────────────────────────────────────────────

export type Action = "create" | "update" | "unchanged" | "delete" | "absent";

export interface ObjectAction {
  readonly action: Action;
  readonly kind: "Service" | "Endpoints" | "WorkloadEntry";
  readonly name: string;
  readonly namespace: string;
  /** The object sent (create/update), for --dry-run and --json. */
  readonly object?: unknown;
}

export interface ExecuteOptions {
  readonly dryRun: boolean;
  readonly clock: Clock;
  /** Progress lines in the spirit of the original istioctl (stderr). */
  readonly log: (line: string) => void;
  /** Attempts per object on resourceVersion conflicts (default 10). */
  readonly maxAttempts?: number;
  readonly random?: () => number;
}

export interface RegisterReport {
  readonly service: string;
  readonly namespace: string;
  readonly ip: string;
  readonly dryRun: boolean;
  readonly actions: readonly ObjectAction[];
  readonly endpoints: number;
  readonly duplicatesRemoved: number;
  /** Conflicts retried. */
  readonly retries: number;
}

function apiPaths(namespace: string, name: string) {
  return {
    services: corePath("services", namespace),
    service: corePath("services", namespace, name),
    endpointsList: corePath("endpoints", namespace),
    endpoints: corePath("endpoints", namespace, name),
  };
}

function isAlreadyExists(error: unknown): boolean {
  return error instanceof KubeApiError && error.status === 409 && error.reason === "AlreadyExists";
}

async function backoff(options: ExecuteOptions, attempt: number): Promise<void> {
  const random = options.random ?? Math.random;
  const base = Math.min(1000, 25 * 2 ** attempt);
  await options.clock.sleep(Math.round(base / 2 + random() * (base / 2)));
}

function conflictError(subject: string, attempts: number, cause: unknown): AgentError {
  return new AgentError({
    code: "UPDATE_CONFLICT",
    message: `${subject} kept changing while it was being updated (${attempts} attempts)`,
    subject,
    hint: "another client updates it continuously; run the command again",
    cause,
  });
}

/**
 * Reads the Endpoints, applies `plan`, writes it with the read resourceVersion; on a conflict (someone else wrote in
 * between) or a lost create race, re-reads and tries again, at most `maxAttempts` times.
 */
async function updateEndpoints(
  client: KubeClient,
  target: { namespace: string; name: string; initial: () => EndpointsObject | undefined },
  plan: (current: EndpointsObject) => { endpoints: EndpointsObject; changed: boolean },
  options: ExecuteOptions,
): Promise<{ action: ObjectAction; final: EndpointsObject; retries: number; planned: EndpointsObject }> {
  const paths = apiPaths(target.namespace, target.name);
  const maxAttempts = options.maxAttempts ?? 10;
  let lastError: unknown;
  for (let attempt = 0; attempt < maxAttempts; attempt++) {
    if (attempt > 0) await backoff(options, attempt);
    let current: EndpointsObject | undefined;
    try {
      current = await client.get<EndpointsObject>(paths.endpoints);
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
    const creating = current === undefined;
    const base = current ?? target.initial();
    if (base === undefined) {
      return {
        action: { action: "absent", kind: "Endpoints", name: target.name, namespace: target.namespace },
        final: { apiVersion: "v1", kind: "Endpoints", metadata: { name: target.name }, subsets: [] },
        retries: attempt,
        planned: { apiVersion: "v1", kind: "Endpoints", metadata: { name: target.name }, subsets: [] },
      };
    }
    if (creating) {
      options.log(
        `Got 'endpoints "${target.name}" not found' looking up endpoints for '${target.name}' in namespace '${target.namespace}', attempting to create them`,
      );
    }
    const result = plan(base);
    if (!result.changed && !creating) {
      return {
        action: { action: "unchanged", kind: "Endpoints", name: target.name, namespace: target.namespace },
        final: base,
        retries: attempt,
        planned: result.endpoints,
      };
    }
    try {
      const written = creating
        ? await client.create<EndpointsObject>(paths.endpointsList, result.endpoints, { dryRun: options.dryRun })
        : await client.update<EndpointsObject>(paths.endpoints, result.endpoints, { dryRun: options.dryRun });
      return {
        action: {
          action: creating ? "create" : "update",
          kind: "Endpoints",
          name: target.name,
          namespace: target.namespace,
          object: result.endpoints,
        },
        final: written,
        retries: attempt,
        planned: result.endpoints,
      };
    } catch (error) {
      if (!isConflict(error) && !isAlreadyExists(error)) throw error;
      lastError = error;
      options.log(
        `Endpoints ${target.namespace}/${target.name} changed while updating (${isConflict(error) ? "resourceVersion conflict" : "created concurrently"}), retrying (attempt ${attempt + 2} of ${maxAttempts})`,
      );
    }
  }
  throw conflictError(`endpoints ${target.namespace}/${target.name}`, maxAttempts, lastError);
}

interface ServicePort {
  readonly name?: string;
  readonly port?: number;
  readonly targetPort?: number | string;
}

/**
 * Endpoints ports are matched to Service ports by name, so against an existing Service the requested ports take the
 * names the Service gives them (by target port, else port). Ports the Service does not expose are kept, with a
 * warning: traffic cannot reach them through this Service.
 */
export function alignPortNames(
  ports: readonly PortSpec[],
  service: ServiceObject,
): { ports: PortSpec[]; messages: string[] } {
  const servicePorts = (service.spec?.["ports"] ?? []) as readonly ServicePort[];
  const messages: string[] = [];
  const aligned = ports.map((p) => {
    const match = servicePorts.find((sp) => (typeof sp.targetPort === "number" ? sp.targetPort : sp.port) === p.port);
    if (match === undefined) {
      messages.push(
        `Warning: service ${service.metadata.name} does not expose port ${p.port}; it is registered but unreachable through the service`,
      );
      return p;
    }
    const name = match.name ?? "";
    if (name !== p.name)
      messages.push(`Using the service's name '${name}' for port ${p.port} (instead of '${p.name}')`);
    return { name, port: p.port };
  });
  return { ports: aligned, messages };
}

async function ensureService(
  client: KubeClient,
  input: RegistrationInput,
  options: ExecuteOptions,
): Promise<{ action: ObjectAction; ports: readonly PortSpec[] }> {
  const paths = apiPaths(input.namespace, input.service);
  let existing: ServiceObject | undefined;
  try {
    existing = await client.get<ServiceObject>(paths.service);
  } catch (error) {
    if (!isNotFound(error)) throw error;
    options.log(
      `Got 'services "${input.service}" not found' looking up svc '${input.service}' in namespace '${input.namespace}', attempting to create it`,
    );
  }
  if (existing !== undefined) {
    // The original never updates an existing Service; say when it does not carry what this registration asks for.
    const declared = existing.metadata.annotations?.[SERVICE_ACCOUNT_ANNOTATION];
    const accounts = (declared ?? "").split(",").map((s) => s.trim());
    if (!accounts.includes(input.serviceAccount)) {
      options.log(
        `Warning: existing service ${input.namespace}/${input.service} does not list service account '${input.serviceAccount}' in ${SERVICE_ACCOUNT_ANNOTATION} (${declared ?? "unset"}); it is left unchanged`,
      );
    }
    const selector = existing.spec?.["selector"];
    if (selector !== undefined && selector !== null && Object.keys(selector).length > 0) {
      options.log(
        `Warning: existing service ${input.namespace}/${input.service} has a selector; Kubernetes manages its Endpoints and may remove the VM's address`,
      );
    }
    const aligned = alignPortNames(input.ports, existing);
    for (const message of aligned.messages) options.log(message);
    return {
      action: { action: "unchanged", kind: "Service", name: input.service, namespace: input.namespace },
      ports: aligned.ports,
    };
  }
  const service = planService(input);
  try {
    await client.create(paths.services, service, { dryRun: options.dryRun });
  } catch (error) {
    if (!isAlreadyExists(error)) throw error;
    // Created concurrently by another registration: take its port names.
    return ensureService(client, input, options);
  }
  return {
    action: { action: "create", kind: "Service", name: input.service, namespace: input.namespace, object: service },
    ports: input.ports,
  };
}

async function ensureWorkloadEntry(
  client: KubeClient,
  input: RegistrationInput,
  options: ExecuteOptions,
): Promise<ObjectAction> {
  const entry = planWorkloadEntry(input);
  const name = entry.metadata.name;
  const list = groupPath(WORKLOAD_ENTRY_GROUP, "workloadentries", input.namespace);
  const path = groupPath(WORKLOAD_ENTRY_GROUP, "workloadentries", input.namespace, name);
  const maxAttempts = options.maxAttempts ?? 10;
  let lastError: unknown;
  for (let attempt = 0; attempt < maxAttempts; attempt++) {
    if (attempt > 0) await backoff(options, attempt);
    let current: WorkloadEntryObject | undefined;
    try {
      current = await client.get<WorkloadEntryObject>(path);
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
    try {
      if (current === undefined) {
        await client.create(list, entry, { dryRun: options.dryRun }).catch((error: unknown) => {
          // 404 on a create: the resource type itself is unknown to the API server.
          if (!isNotFound(error)) throw error;
          throw new AgentError({
            code: "WORKLOAD_ENTRY_UNSUPPORTED",
            message: "the API server does not serve networking.istio.io/v1 WorkloadEntry",
            subject: client.server,
            hint: "install the Istio CRDs (Istio 1.22+ serves networking.istio.io/v1), or register without --workload-entry",
            cause: error,
          });
        });
        options.log(`Created WorkloadEntry ${input.namespace}/${name} for ${input.ip}`);
        return { action: "create", kind: "WorkloadEntry", name, namespace: input.namespace, object: entry };
      }
      if (JSON.stringify(current.spec) === JSON.stringify(entry.spec)) {
        options.log(`WorkloadEntry ${input.namespace}/${name} is up to date`);
        return { action: "unchanged", kind: "WorkloadEntry", name, namespace: input.namespace };
      }
      const updated: WorkloadEntryObject = {
        ...entry,
        metadata: { ...current.metadata, labels: { ...current.metadata.labels, ...entry.metadata.labels } },
      };
      await client.update(path, updated, { dryRun: options.dryRun });
      options.log(`Updated WorkloadEntry ${input.namespace}/${name}`);
      return { action: "update", kind: "WorkloadEntry", name, namespace: input.namespace, object: updated };
    } catch (error) {
      if (!isConflict(error) && !isAlreadyExists(error)) throw error;
      lastError = error;
    }
  }
  throw conflictError(`workloadentry ${input.namespace}/${name}`, maxAttempts, lastError);
}

function quoteList(values: Readonly<Record<string, string>>): string {
  return Object.entries(values)
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
}

export async function register(
  client: KubeClient,
  input: RegistrationInput & { readonly workloadEntry: boolean },
  options: ExecuteOptions,
): Promise<RegisterReport> {
  validateTarget(input.service, input.ip);
  const annotations = objectAnnotations(input);
  options.log(
    `Registering for service '${input.service}' ip '${input.ip}', ports list [${input.ports.map((p) => `{${p.port} ${p.name}}`).join(" ")}]`,
  );
  options.log(
    `${Object.keys(input.labels).length} labels ([${quoteList(input.labels)}]) and ${Object.keys(annotations).length} annotations ([${quoteList(annotations)}])`,
  );
  const service = await ensureService(client, input, options);
  const actions: ObjectAction[] = [service.action];
  const ports = service.ports;
  let duplicatesRemoved = 0;
  const result = await updateEndpoints(
    client,
    { namespace: input.namespace, name: input.service, initial: () => planEmptyEndpoints(input) },
    (current) => {
      const plan = planAddAddress(current, input.ip, ports);
      for (const message of plan.messages) options.log(message);
      duplicatesRemoved = plan.duplicatesRemoved;
      return plan;
    },
    options,
  );
  actions.push(result.action);
  const count = endpointCount(result.planned);
  options.log(
    result.action.action === "unchanged"
      ? `Service ${input.service} already has ${input.ip}, ${count} endpoints`
      : `${options.dryRun ? "Would update" : "Successfully updated"} ${input.service}, now with ${count} endpoints`,
  );
  if (input.workloadEntry) actions.push(await ensureWorkloadEntry(client, { ...input, ports }, options));
  return {
    service: input.service,
    namespace: input.namespace,
    ip: input.ip,
    dryRun: options.dryRun,
    actions,
    endpoints: count,
    duplicatesRemoved,
    retries: result.retries,
  };
}

export interface DeregisterInput {
  readonly service: string;
  readonly namespace: string;
  readonly ip: string;
  readonly workloadEntry: boolean;
}

export interface DeregisterReport {
  readonly service: string;
  readonly namespace: string;
  readonly ip: string;
  readonly dryRun: boolean;
  readonly actions: readonly ObjectAction[];
  /** Occurrences of the IP removed (0: it was not registered). */
  readonly removed: number;
  readonly endpoints: number;
  readonly retries: number;
}

/** Removes the IP from the Endpoints (the Service is kept, as in the original) and, if asked, its WorkloadEntry. */
export async function deregister(
  client: KubeClient,
  input: DeregisterInput,
  options: ExecuteOptions,
): Promise<DeregisterReport> {
  validateTarget(input.service, input.ip);
  options.log(`De-registering for service '${input.service}' ip '${input.ip}'`);
  let removed = 0;
  const result = await updateEndpoints(
    client,
    { namespace: input.namespace, name: input.service, initial: () => undefined },
    (current) => {
      const plan = planRemoveAddress(current, input.ip);
      removed = plan.removed;
      return { endpoints: plan.endpoints, changed: plan.removed > 0 };
    },
    options,
  );
  const actions: ObjectAction[] = [result.action];
  if (result.action.action === "absent") {
    options.log(`No endpoints for service '${input.service}' in namespace '${input.namespace}'; nothing to remove`);
  } else if (removed === 0) {
    options.log(`Could not find ip ${input.ip} in svc ${input.service} endpoints`);
  } else {
    options.log(
      `${options.dryRun ? "Would remove" : "Removed"} ${removed} entr${removed === 1 ? "y" : "ies"} of ${input.ip}, ${endpointCount(result.planned)} endpoints left`,
    );
  }
  if (input.workloadEntry) {
    const name = workloadEntryName(input.service, input.ip);
    const path = groupPath(WORKLOAD_ENTRY_GROUP, "workloadentries", input.namespace, name);
    try {
      await client.delete(path, { dryRun: options.dryRun });
      actions.push({ action: "delete", kind: "WorkloadEntry", name, namespace: input.namespace });
      options.log(`${options.dryRun ? "Would delete" : "Deleted"} WorkloadEntry ${input.namespace}/${name}`);
    } catch (error) {
      if (!isNotFound(error)) throw error;
      actions.push({ action: "absent", kind: "WorkloadEntry", name, namespace: input.namespace });
      options.log(`No WorkloadEntry ${input.namespace}/${name}`);
    }
  }
  if (!options.dryRun) options.log("Deregistered service successfully");
  return {
    service: input.service,
    namespace: input.namespace,
    ip: input.ip,
    dryRun: options.dryRun,
    actions,
    removed,
    endpoints: endpointCount(result.planned),
    retries: result.retries,
  };
}
