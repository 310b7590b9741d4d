import { describe, expect, it } from "vitest";
import { UsageError } from "../platform/errors.js";
import { parseOnly, renderResults } from "./check.js";

describe("istio-vm check rendering", () => {
  it("prints one row per check, the details and a hint line under each failure, and a count", () => {
    const text = renderResults(
      [
        { name: "dns", ok: true, status: "pass", summary: "7/7 names resolve", details: ["ok   istio-pilot: …"] },
        {
          name: "discovery",
          ok: false,
          status: "fail",
          summary: "Pilot answered HTTP 503 (service registry unavailable)",
          details: ["GET http://istio-pilot.istio-system:8080/v1/registration/…", "HTTP 503"],
          hint: "Pilot cannot read its service registry",
        },
        { name: "interception", ok: true, status: "skip", summary: "not run", details: [] },
      ],
      false,
    );
    expect(text).toBe(
      [
        "CHECK         STATUS   DETAIL",
        "dns           ok       7/7 names resolve",
        "discovery     FAIL     Pilot answered HTTP 503 (service registry unavailable)",
        "    GET http://istio-pilot.istio-system:8080/v1/registration/…",
        "    HTTP 503",
        "    hint: Pilot cannot read its service registry",
        "interception  skipped  not run",
        "",
        "1 of 3 checks failed",
        "",
      ].join("\n"),
    );
  });

  it("accepts repeated and comma-separated --only names and rejects unknown ones as a usage error", () => {
    expect(parseOnly(["dns,discovery", "dns", " ca "])).toEqual(["dns", "discovery", "ca"]);
    expect(() => parseOnly(["dsn"])).toThrow(UsageError);
    expect(() => parseOnly(["dsn"])).toThrow(/unknown check dsn/);
  });
});
