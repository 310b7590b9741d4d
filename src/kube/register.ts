/**
 * `register` / `deregister` (istioctl register of Istio 0.2–0.8, docs/protocols.md): a VM service becomes a
 * selector-less Service plus an Endpoints object holding the VM's IP; Pilot scans Endpoints for the proxy's IP. The
 * original appended the IP blindly (registering twice listed it twice) and had no retry on concurrent updates; here
 * the planners are pure and idempotent (register-plan.ts), and these executors re-read and retry on resourceVersion
 * conflicts (conflict-retry.ts).
 *
 * For the istiod profile a `WorkloadEntry` (networking.istio.io/v1) can be written as well: it carries the VM's
 * identity (service account) and labels, named as istiod names auto-registered entries (`<name>-<ip sanitised>`).
 */
import { AgentError } from "../platform/errors.js";
import type { KubeClient } from "./client.js";
import { isAlreadyExists, isConflict, isNotFound } from "./client.js";
import type { RetryOptions } from "./conflict-retry.js";
import { retryOnConflict } from "./conflict-retry.js";
import { corePath, groupPath } from "./profile.js";
import type { PortSpec, RegistrationInput } from "./register-inputs.js";
import { validateTarget } from "./register-inputs.js";
import type { EndpointsObject, ServiceObject, WorkloadEntryObject } from "./register-objects.js";
import { SERVICE_ACCOUNT_ANNOTATION, WORKLOAD_ENTRY_GROUP } from "./register-objects.js";
import {
  alignPortNames,
  endpointCount,
  objectAnnotations,
  planAddAddress,
  planEmptyEndpoints,
  planRemoveAddress,
  planService,
  planWorkloadEntry,
  workloadEntryName,
} from "./register-plan.js";

// The CLI reads the inputs through this module.
export { parseKeyValues, parsePortSpecs, validateTarget } from "./register-inputs.js";

export type Action = "create" | "update" | "unchanged" | "delete" | "absent";

export interface ObjectAction {
  readonly action: Action;
  readonly kind: "Service" | "Endpoints" | "WorkloadEntry";
  readonly name: string;
  readonly namespace: string;
  /** The object sent (create/update), for --dry-run and --json. */
  readonly object?: unknown;
}

export interface ExecuteOptions extends RetryOptions {
  readonly dryRun: boolean;
  /** Progress lines in the spirit of the original istioctl (stderr). */
  readonly log: (line: string) => void;
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
  const retry = {
    ...options,
    subject: `endpoints ${target.namespace}/${target.name}`,
    onRetry: (error: unknown, next: number, maxAttempts: number) => {
      options.log(
        `Endpoints ${target.namespace}/${target.name} changed while updating (${isConflict(error) ? "resourceVersion conflict" : "created concurrently"}), retrying (attempt ${next} of ${maxAttempts})`,
      );
    },
  };
  return retryOnConflict(retry, async (attempt) => {
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
  });
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
  return retryOnConflict({ ...options, subject: `workloadentry ${input.namespace}/${name}` }, async () => {
    let current: WorkloadEntryObject | undefined;
    try {
      current = await client.get<WorkloadEntryObject>(path);
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
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
  });
}

function quoteList(values: Readonly<Record<string, string>>): string {
  return Object.entries(values)
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
}

function reportSubject(
  input: { readonly service: string; readonly namespace: string; readonly ip: string },
  options: ExecuteOptions,
): { service: string; namespace: string; ip: string; dryRun: boolean } {
  return { service: input.service, namespace: input.namespace, ip: input.ip, dryRun: options.dryRun };
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
    ...reportSubject(input, options),
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
    ...reportSubject(input, options),
    actions,
    removed,
    endpoints: endpointCount(result.planned),
    retries: result.retries,
  };
}
