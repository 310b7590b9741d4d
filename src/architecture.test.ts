/**
 * The layering of docs/architecture.md, checked against the real imports: every non-test file under src/<folder>/
 * may import only the folders its row of the document's table lists (and itself). The table is the rule; this test
 * keeps the document and the code from drifting apart.
 */
import { readdir, readFile } from "node:fs/promises";
import { join, relative, sep } from "node:path";
import { describe, expect, it } from "vitest";

const SRC = new URL(".", import.meta.url).pathname;
const DOC = new URL("../docs/architecture.md", import.meta.url).pathname;

/** `folder → folders it may import`, from the table under "Layers". */
async function documentedLayers(): Promise<Map<string, Set<string>>> {
  const text = await readFile(DOC, "utf8");
  const section = text.split("## Layers")[1]?.split("\n## ")[0] ?? "";
  const layers = new Map<string, Set<string>>();
  for (const match of section.matchAll(/^\| `([a-z-]+)` +\|([^|]*)\|$/gm)) {
    const allowed = (match[2] ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s !== "");
    layers.set(match[1] ?? "", new Set(allowed));
  }
  return layers;
}

async function sourceFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await sourceFiles(path)));
    else if (entry.name.endsWith(".ts") && !entry.name.endsWith(".test.ts")) out.push(path);
  }
  return out;
}

describe("docs/architecture.md", () => {
  it("has a row for every folder of src/", async () => {
    const layers = await documentedLayers();
    const folders = (await readdir(SRC, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name);
    expect([...layers.keys()].sort()).toEqual(folders.sort());
  });

  it("lists every folder a source file imports", async () => {
    const layers = await documentedLayers();
    const violations: string[] = [];
    for (const file of await sourceFiles(SRC)) {
      const [folder, ...rest] = relative(SRC, file).split(sep);
      if (folder === undefined || rest.length === 0) continue; // main.ts, cli.ts, version.ts
      const allowed = layers.get(folder) ?? new Set<string>();
      const text = await readFile(file, "utf8");
      for (const match of text.matchAll(/from "\.\.\/([a-z-]+)\//g)) {
        const target = match[1] ?? "";
        if (!allowed.has(target)) violations.push(`${relative(SRC, file)} imports ${target}`);
      }
    }
    expect(violations).toEqual([]);
  });

  it("keeps the dev control plane out of production paths: only cli/dev.ts imports it", async () => {
    const importers: string[] = [];
    for (const file of await sourceFiles(SRC)) {
      if (relative(SRC, file).startsWith(`devplane${sep}`)) continue;
      if (/from "\.\.?\/devplane\//.test(await readFile(file, "utf8"))) importers.push(relative(SRC, file));
    }
    expect(importers).toEqual([`cli${sep}dev.ts`]);
  });
});
