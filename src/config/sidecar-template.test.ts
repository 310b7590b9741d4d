import { describe, expect, it } from "vitest";
import { parseEnvFile } from "./env-file.js";
import { VARIABLE_NAMES, VARIABLES } from "./registry.js";
import { defaultValue, renderSidecarTemplate } from "./sidecar-template.js";

const text = renderSidecarTemplate();
const documented = VARIABLE_NAMES.filter((n) => VARIABLES[n].home !== "environment");

describe("renderSidecarTemplate", () => {
  it("sets nothing: every line is a comment or blank, so the shipped file changes no default", () => {
    expect(parseEnvFile(text, "sidecar.env")).toEqual([]);
  });

  it("documents every sidecar.env and cluster.env variable once, with its description and default", () => {
    for (const name of documented) {
      const lines = text.split("\n");
      expect(
        lines.filter((l) => l.startsWith(`#${name}=`)),
        name,
      ).toHaveLength(1);
      const firstWords = VARIABLES[name].description.split(" ").slice(0, 3).join(" ");
      expect(text, name).toContain(`# ${name}: ${firstWords}`);
    }
  });

  it("leaves out variables that only the environment can set", () => {
    expect(text).not.toMatch(/^#ISTIO_VM_ROOT=/m);
    expect(text).not.toMatch(/^#ISTIO_SIDECAR_CONFIG=/m);
  });

  it("gives each variable a value its own type accepts when the line is uncommented", () => {
    const uncommented = text
      .split("\n")
      .filter((l) => /^#[A-Z][A-Z0-9_]*=/.test(l))
      .map((l) => l.slice(1))
      .join("\n");
    const entries = parseEnvFile(uncommented, "sidecar.env");
    expect(entries.map((e) => e.key).sort()).toEqual([...documented].sort());
    for (const entry of entries) {
      const spec = VARIABLES[entry.key as keyof typeof VARIABLES];
      expect(() => spec.type.parse(entry.value), entry.key).not.toThrow();
      expect(entry.value).toBe(defaultValue(entry.key as keyof typeof VARIABLES));
    }
  });

  it("shows both profiles' defaults where the control plane changes them", () => {
    expect(text).toContain("default: 15012 (istiod profile); 8080 (legacy profile)");
  });

  it("keeps lines within 120 columns", () => {
    for (const line of text.split("\n")) expect(line.length, line).toBeLessThanOrEqual(120);
  });
});
