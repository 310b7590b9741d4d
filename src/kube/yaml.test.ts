import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { YamlError, parseYaml, renderYaml } from "./yaml.js";

/** JSON-shaped data: what kubeconfigs, manifests and cloud-config hold. */
const json = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: "small" },
    fc.string(),
    fc.constantFrom("yes", "no", "on", "off", "y", "n", "~", "0600", "0x1f", "1:20", "1e3", ".inf", "2024-01-02", "<<"),
    fc.integer(),
    fc.boolean(),
    fc.constant(null),
    fc.array(tie("value"), { maxLength: 4 }),
    fc.dictionary(fc.string(), tie("value"), { maxKeys: 4 }),
  ),
})).value;

describe("renderYaml", () => {
  test.prop([json])("reads back as the same data, even strings that YAML 1.1 would take for other types", (value) => {
    expect(parseYaml(renderYaml(value))).toEqual(value);
  });

  it("writes block YAML the way kubectl does, quoting what a YAML 1.1 reader would not take as a string", () => {
    expect(
      renderYaml({ users: [{ name: "a", user: { token: "yes", args: ["0600", "--x"] } }], preferences: {}, n: null }),
    ).toBe(`users:
- name: a
  user:
    token: "yes"
    args:
    - "0600"
    - --x
preferences: {}
"n": null
`);
  });

  it("puts comment lines first and keeps long lines whole", () => {
    const long = "A".repeat(300);
    expect(renderYaml({ content: long }, ["cloud-config", " made by a test"])).toBe(
      `#cloud-config\n# made by a test\n\ncontent: ${long}\n`,
    );
  });
});

describe("parseYaml", () => {
  it("reads an empty text as null and JSON as JSON", () => {
    expect(parseYaml("")).toBeNull();
    expect(parseYaml("# only a comment\n")).toBeNull();
    expect(parseYaml('{\n\t"a": [1, "b\\/c"]\n}')).toEqual({ a: [1, "b/c"] });
  });

  it("names the line and column of the first problem", () => {
    const error = (() => {
      try {
        parseYaml("a: 1\nb: [1, 2\nc: 3\n");
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(error).toBeInstanceOf(YamlError);
    // The unclosed `[` is noticed where the flow sequence should have ended.
    expect(error).toMatchObject({ line: 3, column: 1, reason: expect.stringMatching(/Flow sequence/) as unknown });
  });
});
