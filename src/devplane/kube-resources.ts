/**
 * The resources the dev Kubernetes API serves, and the discovery documents kubectl reads to find them (`/api`,
 * `/apis`, `/api/v1`, `/apis/<group>/<version>`). Store keys are the plain resource names ("services",
 * "workloadentries"): kube-dns, Pilot and the CA read the same store.
 */
import protobuf from "protobufjs";

export interface ResourceDefinition {
  readonly group: string;
  readonly version: string;
  /** Plural resource name, as in paths and RBAC. */
  readonly name: string;
  readonly singular: string;
  readonly kind: string;
  readonly namespaced: boolean;
  readonly shortNames?: readonly string[];
  readonly categories?: readonly string[];
  /** Subresources (`status`, `token`). */
  readonly subresources?: readonly string[];
}

const CORE = { group: "", version: "v1" } as const;
const VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"] as const;

export const RESOURCES: readonly ResourceDefinition[] = [
  { ...CORE, name: "namespaces", singular: "namespace", kind: "Namespace", namespaced: false, shortNames: ["ns"] },
  {
    ...CORE,
    name: "services",
    singular: "service",
    kind: "Service",
    namespaced: true,
    shortNames: ["svc"],
    categories: ["all"],
    subresources: ["status"],
  },
  { ...CORE, name: "endpoints", singular: "endpoints", kind: "Endpoints", namespaced: true, shortNames: ["ep"] },
  { ...CORE, name: "secrets", singular: "secret", kind: "Secret", namespaced: true },
  { ...CORE, name: "configmaps", singular: "configmap", kind: "ConfigMap", namespaced: true, shortNames: ["cm"] },
  {
    ...CORE,
    name: "serviceaccounts",
    singular: "serviceaccount",
    kind: "ServiceAccount",
    namespaced: true,
    shortNames: ["sa"],
    subresources: ["token"],
  },
  {
    group: "apps",
    version: "v1",
    name: "deployments",
    singular: "deployment",
    kind: "Deployment",
    namespaced: true,
    shortNames: ["deploy"],
    categories: ["all"],
    subresources: ["status"],
  },
  {
    group: "networking.k8s.io",
    version: "v1",
    name: "servicecidrs",
    singular: "servicecidr",
    kind: "ServiceCIDR",
    namespaced: false,
    subresources: ["status"],
  },
  {
    group: "networking.istio.io",
    version: "v1",
    name: "workloadentries",
    singular: "workloadentry",
    kind: "WorkloadEntry",
    namespaced: true,
    shortNames: ["we"],
    categories: ["istio-io", "networking-istio-io"],
    subresources: ["status"],
  },
  {
    group: "networking.istio.io",
    version: "v1",
    name: "workloadgroups",
    singular: "workloadgroup",
    kind: "WorkloadGroup",
    namespaced: true,
    shortNames: ["wg"],
    categories: ["istio-io", "networking-istio-io"],
    subresources: ["status"],
  },
];

export function apiVersionOf(def: ResourceDefinition): string {
  return def.group === "" ? def.version : `${def.group}/${def.version}`;
}

/** The resources served under a group/version, honouring which optional APIs are switched off. */
export function servedResources(disabledGroups: ReadonlySet<string>): ResourceDefinition[] {
  return RESOURCES.filter((r) => !disabledGroups.has(r.group));
}

export function findResource(
  served: readonly ResourceDefinition[],
  group: string,
  version: string,
  name: string,
): ResourceDefinition | undefined {
  return served.find((r) => r.group === group && r.version === version && r.name === name);
}

export function apiVersionsDocument(serverAddress: string): unknown {
  return {
    kind: "APIVersions",
    versions: ["v1"],
    serverAddressByClientCIDRs: [{ clientCIDR: "0.0.0.0/0", serverAddress }],
  };
}

function groupDocument(group: string, version: string): Record<string, unknown> {
  const gv = { groupVersion: `${group}/${version}`, version };
  return { name: group, versions: [gv], preferredVersion: gv };
}

export function apiGroupListDocument(served: readonly ResourceDefinition[]): unknown {
  const groups = [...new Set(served.filter((r) => r.group !== "").map((r) => `${r.group}\u0000${r.version}`))].map(
    (key) => {
      const [group = "", version = ""] = key.split("\u0000");
      return groupDocument(group, version);
    },
  );
  return { kind: "APIGroupList", apiVersion: "v1", groups };
}

export function apiGroupDocument(served: readonly ResourceDefinition[], group: string): unknown {
  const def = served.find((r) => r.group === group);
  if (def === undefined) return undefined;
  return { kind: "APIGroup", apiVersion: "v1", ...groupDocument(group, def.version) };
}

export function apiResourceListDocument(
  served: readonly ResourceDefinition[],
  group: string,
  version: string,
): unknown {
  const defs = served.filter((r) => r.group === group && r.version === version);
  if (defs.length === 0) return undefined;
  const resources = defs.flatMap((r) => [
    {
      name: r.name,
      singularName: r.singular,
      namespaced: r.namespaced,
      kind: r.kind,
      verbs: [...VERBS],
      ...(r.shortNames === undefined ? {} : { shortNames: r.shortNames }),
      ...(r.categories === undefined ? {} : { categories: r.categories }),
    },
    ...(r.subresources ?? []).map((sub) =>
      sub === "token"
        ? {
            name: `${r.name}/token`,
            singularName: "",
            namespaced: r.namespaced,
            group: "authentication.k8s.io",
            version: "v1",
            kind: "TokenRequest",
            verbs: ["create"],
          }
        : {
            name: `${r.name}/${sub}`,
            singularName: "",
            namespaced: r.namespaced,
            kind: r.kind,
            verbs: ["get", "update"],
          },
    ),
  ]);
  return {
    kind: "APIResourceList",
    apiVersion: "v1",
    groupVersion: group === "" ? version : `${group}/${version}`,
    resources,
  };
}

function groupVersionPath(group: string, version: string): string {
  return group === "" ? `api/${version}` : `apis/${group}/${version}`;
}

/**
 * `/openapi/v3`: the index of per-group-version documents. kubectl reads it to learn that the server validates
 * fields itself (the `fieldValidation` query parameter), and then skips client-side schema validation.
 */
export function openApiV3Index(served: readonly ResourceDefinition[], hash: string): unknown {
  const paths: Record<string, { serverRelativeURL: string }> = {};
  for (const r of served) {
    const gv = groupVersionPath(r.group, r.version);
    paths[gv] = { serverRelativeURL: `/openapi/v3/${gv}?hash=${hash}` };
  }
  return { paths };
}

/** A minimal OpenAPI v3 document for one group/version: operations with their GVK and query parameters, no schemas. */
export function openApiV3Document(served: readonly ResourceDefinition[], group: string, version: string): unknown {
  const defs = served.filter((r) => r.group === group && r.version === version);
  if (defs.length === 0) return undefined;
  const query = (name: string): unknown => ({ name, in: "query", schema: { type: "string", uniqueItems: true } });
  const parameters = [query("dryRun"), query("fieldManager"), query("fieldValidation")];
  const responses = { "200": { description: "OK" } };
  const paths: Record<string, unknown> = {};
  for (const r of defs) {
    const gvk = { group: r.group, version: r.version, kind: r.kind };
    const op = (action: string): unknown => ({
      operationId: `${action}${r.kind}`,
      parameters,
      responses,
      "x-kubernetes-action": action,
      "x-kubernetes-group-version-kind": gvk,
    });
    const base = `/${groupVersionPath(r.group, r.version)}${r.namespaced ? "/namespaces/{namespace}" : ""}/${r.name}`;
    paths[base] = { get: op("list"), post: op("post") };
    paths[`${base}/{name}`] = { get: op("get"), put: op("put"), patch: op("patch"), delete: op("delete") };
  }
  return {
    openapi: "3.0.0",
    info: { title: "Kubernetes (istio-vm dev)", version: "v1.33.0" },
    paths,
    components: { schemas: {} },
  };
}

/**
 * What kubectl before 1.27 asks `/openapi/v2` for (client-go discovery `OpenAPISchema`): gnostic's OpenAPI v2
 * protobuf. The answer's content type is the spelling without "@" (kube-openapi's handler answers with it too):
 * client-go parses it with Go's mime.ParseMediaType, which rejects the "@" form as an internal error.
 */
export const OPENAPI_V2_PROTOBUF_ACCEPT = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
export const OPENAPI_V2_PROTOBUF = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/**
 * `/openapi/v2`: a Swagger 2.0 document with no definitions. kubectl before 1.27 (Debian 12 ships 1.20) fetches it
 * for client-side validation of `create -f` / `apply -f` and fails the command when it is missing; a kind without a
 * definition is not validated by the client ("resource is not present, let's just skip validation" in kubectl's
 * pkg/util/openapi/validation, v1.20), so the server stays the one that checks objects, as with `/openapi/v3`.
 * Encoded as gnostic's `openapi.v2.Document` (github.com/googleapis/gnostic openapiv2/OpenAPIv2.proto: swagger = 1,
 * info = 2 {title = 1, version = 2}) when the client asks for protobuf, else as JSON.
 */
export function openApiV2Document(format: "protobuf" | "json"): Buffer {
  const title = "Kubernetes (istio-vm dev)";
  const version = "v1.33.0";
  if (format === "json")
    return Buffer.from(JSON.stringify({ swagger: "2.0", info: { title, version }, paths: {}, definitions: {} }));
  const info = protobuf.Writer.create().uint32(0x0a).string(title).uint32(0x12).string(version).finish();
  return Buffer.from(protobuf.Writer.create().uint32(0x0a).string("2.0").uint32(0x12).bytes(info).finish());
}
