import { readFile } from "node:fs/promises";
import { format, resolveConfig } from "prettier";
import { describe, expect, it } from "vitest";
import { renderConfigurationReference } from "./config-reference.js";
import { VARIABLE_NAMES } from "./registry.js";

const DOC = new URL("../../docs/configuration.md", import.meta.url).pathname;

describe("docs/configuration.md", () => {
  it("is what `npm run docs` renders from the registry (regenerate with `npm run docs` when this fails)", async () => {
    const options = (await resolveConfig(DOC)) ?? {};
    const expected = await format(renderConfigurationReference(), { ...options, filepath: DOC });
    expect(await readFile(DOC, "utf8")).toBe(expected);
  });

  it("has one row per variable of the registry, each with its type and default", () => {
    const text = renderConfigurationReference();
    for (const name of VARIABLE_NAMES) {
      const rows = text.split("\n").filter((line) => line.startsWith(`| \`${name}\` |`));
      expect(rows, name).toHaveLength(1);
      expect(rows[0]?.split(" | ").length, name).toBe(4);
    }
  });
});
