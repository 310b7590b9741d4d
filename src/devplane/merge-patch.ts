/** The patch formats kubectl sends: RFC 7386 JSON merge patch and the subset of strategic merge patch it uses. */

function clone<T>(v: T): T {
  return structuredClone(v);
}

/** RFC 7386 JSON merge patch (kubectl's strategic merge patches are applied the same way: good enough here). */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return clone(patch);
  const base = target !== null && typeof target === "object" && !Array.isArray(target) ? target : {};
  const result = new Map<string, unknown>(Object.entries(base));
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith("$")) continue;
    if (value === null) result.delete(key);
    else result.set(key, mergePatch(result.get(key), value));
  }
  return Object.fromEntries(result);
}

/** List merge keys of the lists the dev API's objects have (k8s.io/api's patchMergeKey tags). */
const MERGE_KEYS: Readonly<Record<string, string>> = { ports: "port", conditions: "type", ingress: "ip" };

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/**
 * The subset of strategic merge patch that kubectl apply/edit produce for these objects: maps merge as in RFC 7386;
 * lists with a merge key (service ports by `port`, ...) merge element-wise, honour `{"$patch": "delete"}` elements and
 * `$setElementOrder/<list>`; other lists are replaced. `$retainKeys` and `$deleteFromPrimitiveList` are ignored.
 */
export function strategicMergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return clone(patch);
  const result = new Map<string, unknown>(Object.entries(isObject(target) ? target : {}));
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith("$")) continue;
    if (value === null) {
      result.delete(key);
      continue;
    }
    const mergeKey = MERGE_KEYS[key];
    const current = result.get(key);
    if (mergeKey !== undefined && Array.isArray(value) && Array.isArray(current)) {
      let merged = current.filter(isObject).map((item) => ({ ...item }));
      for (const item of value) {
        if (!isObject(item)) continue;
        const id = item[mergeKey];
        const index = merged.findIndex((m) => m[mergeKey] === id);
        if (item["$patch"] === "delete") {
          if (index >= 0) merged.splice(index, 1);
        } else if (index >= 0) {
          merged[index] = strategicMergePatch(merged[index], item) as Record<string, unknown>;
        } else {
          merged.push(strategicMergePatch({}, item) as Record<string, unknown>);
        }
      }
      const order = patch[`$setElementOrder/${key}`];
      if (Array.isArray(order)) {
        const ids = order.filter(isObject).map((o) => o[mergeKey]);
        merged = [...merged].sort((a, b) => ids.indexOf(a[mergeKey]) - ids.indexOf(b[mergeKey]));
      }
      result.set(key, merged);
    } else {
      result.set(key, isObject(value) ? strategicMergePatch(current, value) : clone(value));
    }
  }
  return Object.fromEntries(result);
}
