/**
 * kube-apiserver's error answers: `Status` objects with its reasons and its messages, word for word (clients parse
 * them: kubectl prints them, the admin commands read the Service CIDR out of a rejected clusterIP).
 */
import type { ResourceDefinition } from "./kube-resources.js";
import { StoreError } from "./store.js";

export interface StatusDetails {
  name?: string;
  group?: string;
  kind?: string;
  causes?: { reason: string; message: string; field: string }[];
}

export class ApiStatusError extends Error {
  readonly code: number;
  readonly reason: string;
  readonly details: StatusDetails | undefined;
  constructor(code: number, reason: string, message: string, details?: StatusDetails) {
    super(message);
    this.name = "ApiStatusError";
    this.code = code;
    this.reason = reason;
    this.details = details;
  }

  toStatus(): Record<string, unknown> {
    return {
      kind: "Status",
      apiVersion: "v1",
      metadata: {},
      status: "Failure",
      message: this.message,
      reason: this.reason,
      ...(this.details === undefined ? {} : { details: this.details }),
      code: this.code,
    };
  }
}

export function qualified(def: ResourceDefinition): string {
  return def.group === "" ? def.name : `${def.name}.${def.group}`;
}

export function notFound(def: ResourceDefinition, name: string): ApiStatusError {
  return new ApiStatusError(404, "NotFound", `${qualified(def)} "${name}" not found`, {
    name,
    ...(def.group === "" ? {} : { group: def.group }),
    kind: def.name,
  });
}

export function invalid(
  def: ResourceDefinition,
  name: string,
  causes: { field: string; message: string }[],
): ApiStatusError {
  const text = causes.map((c) => `${c.field}: ${c.message}`).join(", ");
  return new ApiStatusError(
    422,
    "Invalid",
    `${def.kind}${def.group === "" ? "" : `.${def.group}`} "${name}" is invalid: ${causes.length > 1 ? `[${text}]` : text}`,
    {
      name,
      ...(def.group === "" ? {} : { group: def.group }),
      kind: def.kind,
      causes: causes.map((c) => ({ reason: "FieldValueInvalid", message: c.message, field: c.field })),
    },
  );
}

export function badRequest(message: string): ApiStatusError {
  return new ApiStatusError(400, "BadRequest", message);
}

export function pathNotFound(): ApiStatusError {
  return new ApiStatusError(404, "NotFound", "the server could not find the requested resource", {});
}

export function methodNotAllowed(): ApiStatusError {
  return new ApiStatusError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource");
}

export function alreadyExists(def: ResourceDefinition, name: string): ApiStatusError {
  return new ApiStatusError(409, "AlreadyExists", `${qualified(def)} "${name}" already exists`, {
    name,
    ...(def.group === "" ? {} : { group: def.group }),
    kind: def.name,
  });
}

export function conflict(def: ResourceDefinition, name: string): ApiStatusError {
  return new ApiStatusError(
    409,
    "Conflict",
    `Operation cannot be fulfilled on ${qualified(def)} "${name}": the object has been modified; please apply your changes to the latest version and try again`,
    { name, ...(def.group === "" ? {} : { group: def.group }), kind: def.name },
  );
}

/** A store error as the API server reports it; anything else unchanged. */
export function fromStoreError(def: ResourceDefinition, name: string, error: unknown): unknown {
  if (!(error instanceof StoreError)) return error;
  switch (error.reason) {
    case "NotFound":
      return notFound(def, name);
    case "Conflict":
      return conflict(def, name);
    case "AlreadyExists":
      return new ApiStatusError(409, "AlreadyExists", `${qualified(def)} "${name}" already exists`, {
        name,
        kind: def.name,
      });
    case "Invalid":
      return invalid(def, name, [{ field: "metadata", message: error.message }]);
  }
}
