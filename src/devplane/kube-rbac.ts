/** Who may do what on the dev API server: users, a per-subject RBAC table, and kube-apiserver's 403 message. */
import type { ResourceDefinition } from "./kube-resources.js";
import { ApiStatusError, qualified } from "./kube-status.js";

export interface DevUser {
  readonly name: string;
  readonly groups: readonly string[];
}

export interface RbacRule {
  /** Verbs ("get", "list", "watch", "create", "update", "patch", "delete") or "*". */
  readonly verbs: readonly string[];
  /** Resources ("services", "serviceaccounts/token") or "*". */
  readonly resources: readonly string[];
  /** Namespaces the rule applies to; all (and cluster-scoped) when absent. */
  readonly namespaces?: readonly string[];
}

/** Rules by subject: "user:<name>" or "group:<name>". */
export type RbacTable = ReadonlyMap<string, readonly RbacRule[]>;

export const READ_VERBS = ["get", "list", "watch"] as const;

/** admin (group system:masters): everything; token-user: everything; viewer: read only. */
export function defaultRbac(): Map<string, RbacRule[]> {
  return new Map([
    ["group:system:masters", [{ verbs: ["*"], resources: ["*"] }]],
    ["user:token-user", [{ verbs: ["*"], resources: ["*"] }]],
    ["user:viewer", [{ verbs: [...READ_VERBS], resources: ["*"] }]],
  ]);
}

export function isAllowed(
  rbac: RbacTable,
  user: DevUser,
  request: { verb: string; resource: string; namespace: string | undefined },
): boolean {
  const rules = [user.name, ...user.groups.map((g) => `group:${g}`)].flatMap((subject) =>
    subject.startsWith("group:") ? (rbac.get(subject) ?? []) : (rbac.get(`user:${subject}`) ?? []),
  );
  return rules.some(
    (r) =>
      (r.verbs.includes("*") || r.verbs.includes(request.verb)) &&
      (r.resources.includes("*") || r.resources.includes(request.resource)) &&
      (r.namespaces === undefined || (request.namespace !== undefined && r.namespaces.includes(request.namespace))),
  );
}

export function forbidden(
  user: DevUser,
  request: { verb: string; def: ResourceDefinition; subresource?: string; namespace?: string; name?: string },
): ApiStatusError {
  const resource = request.subresource === undefined ? request.def.name : `${request.def.name}/${request.subresource}`;
  const what = `${qualified(request.def)}${request.name === undefined ? "" : ` "${request.name}"`}`;
  const scope = request.namespace === undefined ? "at the cluster scope" : `in the namespace "${request.namespace}"`;
  return new ApiStatusError(
    403,
    "Forbidden",
    `${what} is forbidden: User "${user.name}" cannot ${request.verb} resource "${resource}" in API group "${request.def.group}" ${scope}`,
    {
      ...(request.name === undefined ? {} : { name: request.name }),
      ...(request.def.group === "" ? {} : { group: request.def.group }),
      kind: request.def.name,
    },
  );
}
