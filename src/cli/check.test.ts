import { describe, expect, it } from "vitest";
import { UsageError } from "../platform/errors.js";
import { DEFAULT_WAIT_MS, parseOnly, parseWait, renderResults, renderWaiting } from "./check.js";

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

describe("istio-vm check --wait", () => {
  it("takes a duration, 2m when given alone, and rejects a bad or zero one as a usage error", () => {
    expect(parseWait(undefined)).toBeUndefined();
    expect(parseWait("")).toBe(DEFAULT_WAIT_MS);
    expect(parseWait("30s")).toBe(30_000);
    expect(() => parseWait("soon")).toThrow(UsageError);
    expect(() => parseWait("0s")).toThrow(/--wait must be more than 0/);
  });

  it("says while waiting which checks fail and why the first one does", () => {
    const line = renderWaiting(
      [
        { name: "certificate", ok: false, status: "fail", summary: "no certificate in /etc/certs", details: [] },
        { name: "envoy", ok: true, status: "pass", summary: "Envoy ready (LIVE)", details: [] },
      ],
      59_400,
    );
    expect(line).toBe(
      "waiting (60s left): 1 of 2 checks failing (certificate): certificate: no certificate in /etc/certs\n",
    );
  });
});
