import { fc, test as fcTest } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { EnvFileError, parseEnvFile, quoteEnvValue, renderEnvFile } from "./env-file.js";

const parse = (text: string): Record<string, string> =>
  Object.fromEntries(parseEnvFile(text, "test.env").map((e) => [e.key, e.value]));

function problemsOf(text: string): string[] {
  try {
    parseEnvFile(text, "f.env");
  } catch (error) {
    if (error instanceof EnvFileError) return error.problems.map((p) => `${p.line}: ${p.message}`);
    throw error;
  }
  return [];
}

describe("parseEnvFile", () => {
  it("reads the formats the recipe and istioctl write", () => {
    expect(
      parse(
        [
          "# generated",
          "",
          "ISTIO_SERVICE_CIDR=10.63.240.0/20",
          "export ISTIO_SYSTEM_NAMESPACE=istio-system",
          "  CONTROL_PLANE_AUTH_POLICY=MUTUAL_TLS   # trailing comment",
          `ISTIO_METAJSON_LABELS='{"app":"ratings"}'`,
          `QUOTED="a \\"b\\" \\$c \\\\ d"`,
          "EMPTY=",
          "IT='it'\\''s'",
          "ESCAPED=a\\ b",
        ].join("\n"),
      ),
    ).toEqual({
      ISTIO_SERVICE_CIDR: "10.63.240.0/20",
      ISTIO_SYSTEM_NAMESPACE: "istio-system",
      CONTROL_PLANE_AUTH_POLICY: "MUTUAL_TLS",
      ISTIO_METAJSON_LABELS: '{"app":"ratings"}',
      QUOTED: 'a "b" $c \\ d',
      EMPTY: "",
      IT: "it's",
      ESCAPED: "a b",
    });
  });

  it("accepts CRLF line ends and a missing final newline", () => {
    expect(parse("A=1\r\nB='two'\r\nC=3")).toEqual({ A: "1", B: "two", C: "3" });
  });

  it("keeps multi-line quoted values and reports the line an entry starts on", () => {
    const entries = parseEnvFile("A='x\ny'\nB=2\n", "f");
    expect(entries).toEqual([
      { key: "A", value: "x\ny", line: 1 },
      { key: "B", value: "2", line: 3 },
    ]);
  });

  it("later assignments win, as in bash", () => {
    expect(parse("A=1\nA=2\n")).toEqual({ A: "2" });
  });

  it("never executes or expands: shell syntax is an error with file:line, all lines at once", () => {
    const problems = problemsOf(
      ["OK=1", "A=$(rm -rf /)", "B=`id`", 'C="$HOME"', "D=x; reboot", "E=two words", "F =1", "=x", "G='open"].join(
        "\n",
      ),
    );
    expect(problems).toEqual([
      expect.stringMatching(/^2: '\$' would be expanded/),
      expect.stringMatching(/^3: '`' would be expanded/),
      expect.stringMatching(/^4: '\$' inside double quotes/),
      expect.stringMatching(/^5: unquoted ';' is shell syntax/),
      expect.stringMatching(/^6: unquoted whitespace/),
      expect.stringMatching(/^7: no spaces allowed around '='/),
      expect.stringMatching(/^8: expected KEY=value/),
      expect.stringMatching(/^9: unterminated single quote/),
    ]);
  });

  it("names the file and line in the error message", () => {
    expect(() => parseEnvFile("A=1\nB=$X\n", "/var/lib/istio/envoy/sidecar.env")).toThrow(
      "/var/lib/istio/envoy/sidecar.env:2:",
    );
  });

  it("rejects NUL bytes", () => {
    expect(problemsOf("A=x\0y\n")).toEqual(["1: NUL byte in file"]);
  });
});

describe("renderEnvFile", () => {
  it("writes plain values unquoted (the original cluster.env format) and quotes the rest", () => {
    expect(
      renderEnvFile(
        [
          { key: "ISTIO_SERVICE_CIDR", value: "10.63.240.0/20" },
          { key: "LABELS", value: `{"app": "x"}` },
          { key: "EMPTY", value: "" },
        ],
        { header: ["made by a test"] },
      ),
    ).toBe(`# made by a test\nISTIO_SERVICE_CIDR=10.63.240.0/20\nLABELS='{"app": "x"}'\nEMPTY=''\n`);
  });

  it("quotes everything when asked (istioctl's style)", () => {
    expect(quoteEnvValue("istio-system", "always")).toBe("'istio-system'");
  });
});

describe("properties", () => {
  fcTest.prop([fc.uint8Array({ maxLength: 300 })])(
    "arbitrary bytes: entries or an EnvFileError, nothing else",
    (bytes) => {
      try {
        parseEnvFile(bytes, "fuzz.env");
      } catch (error) {
        expect(error).toBeInstanceOf(EnvFileError);
      }
    },
  );

  fcTest.prop([fc.string({ maxLength: 200 })])("arbitrary text: entries or an EnvFileError, nothing else", (text) => {
    try {
      parseEnvFile(text, "fuzz.env");
    } catch (error) {
      expect(error).toBeInstanceOf(EnvFileError);
    }
  });

  const key = fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,20}$/);
  const value = fc.string({ maxLength: 60 }).filter((v) => !v.includes("\0"));
  fcTest.prop([fc.uniqueArray(fc.tuple(key, value), { selector: ([k]) => k, maxLength: 12 }), fc.boolean()])(
    "render then parse returns the same values",
    (pairs, always) => {
      const entries = pairs.map(([k, v]) => ({ key: k, value: v }));
      const text = renderEnvFile(entries, { quote: always ? "always" : "when-needed" });
      expect(parseEnvFile(text, "roundtrip.env").map((e) => ({ key: e.key, value: e.value }))).toEqual(entries);
    },
  );
});
