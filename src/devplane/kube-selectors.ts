/** `labelSelector` and `fieldSelector` as kube-apiserver reads them: equality, inequality and existence only. */
import { badRequest } from "./kube-status.js";
import type { KubeObject } from "./store.js";

export type Requirement = { key: string; op: "=" | "!=" | "exists" | "!exists"; value: string };

export function parseSelector(text: string | null): Requirement[] {
  if (text === null || text.trim() === "") return [];
  return text.split(",").map((part) => {
    const p = part.trim();
    const ne = /^([^!=]+)!=(.*)$/.exec(p);
    if (ne?.[1] !== undefined) return { key: ne[1].trim(), op: "!=", value: (ne[2] ?? "").trim() };
    const eq = /^([^!=]+)==?(.*)$/.exec(p);
    if (eq?.[1] !== undefined) return { key: eq[1].trim(), op: "=", value: (eq[2] ?? "").trim() };
    if (p.startsWith("!")) return { key: p.slice(1).trim(), op: "!exists", value: "" };
    if (/^[\w./-]+$/.test(p)) return { key: p, op: "exists", value: "" };
    throw badRequest(`unable to parse requirement: ${p} (only =, ==, != and existence are supported)`);
  });
}

export function matches(requirements: readonly Requirement[], lookup: (key: string) => string | undefined): boolean {
  return requirements.every((r) => {
    const v = lookup(r.key);
    switch (r.op) {
      case "=":
        return v === r.value;
      case "!=":
        return v !== r.value;
      case "exists":
        return v !== undefined;
      case "!exists":
        return v === undefined;
    }
  });
}

export function fieldValue(object: KubeObject, key: string): string | undefined {
  if (key === "metadata.name") return object.metadata.name;
  if (key === "metadata.namespace") return object.metadata.namespace;
  if (key === "type") return typeof object["type"] === "string" ? object["type"] : undefined;
  throw badRequest(`field label not supported: ${key}`);
}
