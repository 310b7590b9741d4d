/** Server-side Table output, so that `kubectl get` on the dev API server prints the usual columns. */
import type { ResourceDefinition } from "./kube-resources.js";
import type { KubeObject } from "./store.js";

function age(timestamp: unknown, now: number): string {
  const t = typeof timestamp === "string" ? Date.parse(timestamp) : NaN;
  if (Number.isNaN(t)) return "<unknown>";
  const s = Math.max(0, Math.floor((now - t) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

function text(value: unknown, fallback: string): string {
  return typeof value === "string" || typeof value === "number" ? String(value) : fallback;
}

function columnsFor(def: ResourceDefinition): { name: string; cell: (o: KubeObject) => string | number }[] {
  const spec = (o: KubeObject): Record<string, unknown> => (o["spec"] as Record<string, unknown> | undefined) ?? {};
  switch (def.name) {
    case "services":
      return [
        { name: "Type", cell: (o) => text(spec(o)["type"], "ClusterIP") },
        { name: "Cluster-IP", cell: (o) => text(spec(o)["clusterIP"], "<none>") },
        {
          name: "External-IP",
          cell: (o) => {
            const ingress = (
              (o["status"] as { loadBalancer?: { ingress?: { ip?: string; hostname?: string }[] } } | undefined)
                ?.loadBalancer?.ingress ?? []
            ).map((i) => i.ip ?? i.hostname ?? "");
            if (ingress.length > 0) return ingress.join(",");
            return spec(o)["type"] === "LoadBalancer" ? "<pending>" : "<none>";
          },
        },
        {
          name: "Port(s)",
          cell: (o) =>
            ((spec(o)["ports"] as { port?: number; protocol?: string; nodePort?: number }[] | undefined) ?? [])
              .map((p) => `${p.port ?? ""}${p.nodePort === undefined ? "" : `:${p.nodePort}`}/${p.protocol ?? "TCP"}`)
              .join(",") || "<none>",
        },
      ];
    case "endpoints":
      return [
        {
          name: "Endpoints",
          cell: (o) => {
            const subsets =
              (o["subsets"] as { addresses?: { ip: string }[]; ports?: { port: number }[] }[] | undefined) ?? [];
            const list = subsets.flatMap((s) =>
              (s.addresses ?? []).flatMap((a) => (s.ports ?? [{ port: 0 }]).map((p) => `${a.ip}:${p.port}`)),
            );
            return list.length === 0
              ? "<none>"
              : list.slice(0, 3).join(",") + (list.length > 3 ? ` + ${list.length - 3} more...` : "");
          },
        },
      ];
    case "secrets":
      return [
        { name: "Type", cell: (o) => text(o["type"], "Opaque") },
        { name: "Data", cell: (o) => Object.keys((o["data"] as object | undefined) ?? {}).length },
      ];
    case "configmaps":
      return [{ name: "Data", cell: (o) => Object.keys((o["data"] as object | undefined) ?? {}).length }];
    case "namespaces":
      return [{ name: "Status", cell: (o) => (o["status"] as { phase?: string } | undefined)?.phase ?? "Active" }];
    case "servicecidrs":
      return [{ name: "CIDRs", cell: (o) => ((spec(o)["cidrs"] as string[] | undefined) ?? []).join(",") }];
    case "workloadentries":
      return [
        { name: "Address", cell: (o) => text(spec(o)["address"], "") },
        {
          name: "Healthy",
          cell: (o) =>
            (o["status"] as { conditions?: { type: string; status: string }[] } | undefined)?.conditions?.find(
              (c) => c.type === "Healthy",
            )?.status ?? "",
        },
      ];
    default:
      return [];
  }
}

export function toTable(
  def: ResourceDefinition,
  objects: readonly KubeObject[],
  resourceVersion: string,
  now: number,
): unknown {
  const columns = columnsFor(def);
  return {
    kind: "Table",
    apiVersion: "meta.k8s.io/v1",
    metadata: { resourceVersion },
    columnDefinitions: [
      { name: "Name", type: "string", format: "name", description: "Name of the object", priority: 0 },
      ...columns.map((c) => ({ name: c.name, type: "string", format: "", description: c.name, priority: 0 })),
      { name: "Age", type: "string", format: "", description: "Time since creation", priority: 0 },
    ],
    rows: objects.map((o) => ({
      cells: [o.metadata.name, ...columns.map((c) => c.cell(o)), age(o.metadata.creationTimestamp, now)],
      object: { kind: "PartialObjectMetadata", apiVersion: "meta.k8s.io/v1", metadata: o.metadata },
    })),
  };
}
