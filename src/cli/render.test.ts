import { describe, expect, it } from "vitest";
import { renderTable } from "./render.js";

describe("renderTable", () => {
  it("pads columns to the widest cell and leaves the last column unpadded", () => {
    expect(
      renderTable(
        ["NAME", "VALUE"],
        [
          ["a", "1"],
          ["longer", "2"],
        ],
      ),
    ).toBe("NAME    VALUE\na       1\nlonger  2\n");
  });

  it("escapes what a terminal would act on, so a cell can neither repaint the screen nor break a row", () => {
    const text = renderTable(["K", "V"], [["a\nb", "\x1b[2J\u202e\r"]]);
    expect(text).toBe("K     V\na\\nb  \\x1b[2J\\u{202e}\\r\n");
    expect(text.split("\n")).toHaveLength(3);
  });

  it("cuts cells at maxCellWidth with the full length, so one huge cell cannot widen every row", () => {
    const text = renderTable(
      ["K", "V", "S"],
      [
        ["big", "y".repeat(100_000), "file"],
        ["small", "1", "default"],
      ],
      {
        maxCellWidth: 10,
      },
    );
    const cut = "yyyyyyyyyy… (100000 characters in all)";
    const column = (cell: string): string => cell.padEnd(cut.length + 2);
    expect(text).toBe(
      [`K      ${column("V")}S`, `big    ${column(cut)}file`, `small  ${column("1")}default`, ""].join("\n"),
    );
  });
});
