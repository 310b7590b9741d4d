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

  it("CRLF is read as LF everywhere: comments, continuations, and inside quoted multi-line values", () => {
    expect(parseEnvFile("# c\r\nA='x\r\ny'\r\nB=\"p\\\r\nq\"\r\nC=r\\\r\ns # t\r\n", "f")).toEqual([
      { key: "A", value: "x\ny", line: 2 },
      { key: "B", value: "pq", line: 4 },
      { key: "C", value: "rs", line: 6 },
    ]);
    // A carriage return without its line feed is not a line end: outside quotes it is named.
    expect(problemsOf("A=1\rB=2\n")).toEqual([
      "1: stray carriage return (\\r) not followed by a line feed; quote the value",
    ]);
  });

  it("a UTF-8 byte-order mark is skipped at the very start of the file, and named anywhere else", () => {
    const bom = "\ufeff";
    expect(parseEnvFile(`${bom}A=1\nB=2\n`, "f")).toEqual([
      { key: "A", value: "1", line: 1 },
      { key: "B", value: "2", line: 2 },
    ]);
    expect(parseEnvFile(Buffer.from(`${bom}A=1\r\n`), "f")).toEqual([{ key: "A", value: "1", line: 1 }]);
    const misplaced =
      "byte-order mark (U+FEFF) inside the file; it is accepted only as the very first character of the file, remove this one";
    expect(problemsOf(`A=1\n${bom}B=2\nC=x${bom}\nD='${bom}'\n${bom}${bom}E=5`)).toEqual([
      `2: ${misplaced}`,
      `3: ${misplaced}`,
      `4: ${misplaced}`,
      `5: ${misplaced}`,
    ]);
  });

  it("a file that is not UTF-8 (saved as Latin-1) is an error on the line, not a value with U+FFFD in it", () => {
    expect(() => parseEnvFile(Buffer.from("A=1\nISTIO_META_OWNER=caf\xe9\n", "latin1"), "f")).toThrow(
      "f:2: not UTF-8: a byte here is not valid UTF-8 (read as U+FFFD); save the file as UTF-8",
    );
  });

  it("names an invisible character where a key or '=' was expected", () => {
    expect(problemsOf("\u00a0A=1\nB\u200b=2\n")).toEqual([
      "1: expected KEY=value (found the invisible character \\xa0)",
      "2: expected '=' after B (found the invisible character \\u{200b})",
    ]);
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
  fcTest.prop([
    fc.uniqueArray(
      fc.tuple(
        key,
        value.map((v) => v.replaceAll("\r", "")),
      ),
      { selector: ([k]) => k, maxLength: 12 },
    ),
    fc.boolean(),
    fc.boolean(),
  ])("a file saved with CRLF line ends and a BOM reads the same as with LF", (pairs, always, bom) => {
    const entries = pairs.map(([k, v]) => ({ key: k, value: v }));
    const text = renderEnvFile(entries, { quote: always ? "always" : "when-needed", header: ["saved on Windows"] });
    const windows = `${bom ? "\ufeff" : ""}${text.replaceAll("\n", "\r\n")}`;
    expect(parseEnvFile(windows, "crlf.env")).toEqual(parseEnvFile(text, "lf.env"));
  });

  fcTest.prop([fc.uniqueArray(fc.tuple(key, value), { selector: ([k]) => k, maxLength: 12 }), fc.boolean()])(
    "render then parse returns the same values",
    (pairs, always) => {
      const entries = pairs.map(([k, v]) => ({ key: k, value: v }));
      const text = renderEnvFile(entries, { quote: always ? "always" : "when-needed" });
      expect(parseEnvFile(text, "roundtrip.env").map((e) => ({ key: e.key, value: e.value }))).toEqual(entries);
    },
  );
});
