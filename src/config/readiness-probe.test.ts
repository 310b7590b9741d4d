import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { loadConfig } from "./load.js";
import { describeProbe, parseReadinessProbe } from "./readiness-probe.js";

describe("parseReadinessProbe", () => {
  it("fills in istio-agent's defaults", () => {
    expect(parseReadinessProbe({ httpGet: { port: 8080 } })).toEqual({
      probe: {
        method: { kind: "httpGet", path: "/", port: 8080, host: "localhost", scheme: "http", headers: [] },
        initialDelaySeconds: 0,
        periodSeconds: 10,
        timeoutSeconds: 1,
        successThreshold: 1,
        failureThreshold: 1,
      },
    });
  });

  it("takes proto names, HTTPS, headers and the other methods", () => {
    const parsed = parseReadinessProbe({
      http_get: { path: "/ready", port: 8443, scheme: "HTTPS", http_headers: [{ name: "Host", value: "x" }] },
      period_seconds: 3,
      failure_threshold: 2,
    });
    expect(parsed).toMatchObject({
      probe: {
        method: { scheme: "https", headers: [{ name: "Host", value: "x" }] },
        periodSeconds: 3,
        failureThreshold: 2,
      },
    });
    if ("probe" in parsed) expect(describeProbe(parsed.probe)).toBe("http https://localhost:8443/ready");
    const tcp = parseReadinessProbe({ tcpSocket: { host: "::1", port: 22 } });
    if ("probe" in tcp) expect(describeProbe(tcp.probe)).toBe("tcp [::1]:22");
    const exec = parseReadinessProbe({ exec: { command: ["/bin/true", "x"] } });
    if ("probe" in exec) expect(describeProbe(exec.probe)).toBe("exec /bin/true x");
  });

  it("lists every problem at once", () => {
    expect(parseReadinessProbe({ tcpSocket: { port: 70000 }, periodSeconds: -1, grpc: { port: 1 } })).toEqual({
      problems: [
        "periodSeconds must be a whole number 0–86400",
        "the grpc probe method is not supported (httpGet, tcpSocket, exec)",
        "tcpSocket.port must be a port 1–65535",
      ],
    });
    expect(parseReadinessProbe({})).toEqual({
      problems: ["exactly one of httpGet, tcpSocket, exec is needed (got 0)"],
    });
    expect(parseReadinessProbe({ exec: { command: [] } })).toEqual({
      problems: ["exec.command must be a non-empty list of strings"],
    });
    expect(parseReadinessProbe("x")).toMatchObject({ problems: [expect.stringContaining("must be an object")] });
  });
});

describe("a readinessProbe in PROXY_CONFIG is checked with the rest of the configuration", () => {
  it("reports a probe the agent cannot run as a problem of the variable that holds it (istiod only)", async () => {
    const fs = new MemoryFileSystem({});
    const bad = await loadConfig({
      env: { ISTIO_VM_PROXY_CONFIG: '{"readinessProbe":{"exec":{"command":[]}}}' },
      fs,
    });
    expect(bad.problems).toContainEqual(
      expect.objectContaining({
        subject: "ISTIO_VM_PROXY_CONFIG",
        message: "readinessProbe: exec.command must be a non-empty list of strings",
      }),
    );
    const good = await loadConfig({ env: { PROXY_CONFIG: '{"readinessProbe":{"tcpSocket":{"port":22}}}' }, fs });
    expect(good.problems).toEqual([]);
    const legacy = await loadConfig({
      env: { ISTIO_CONTROL_PLANE: "legacy", PROXY_CONFIG: '{"readinessProbe":{"grpc":{"port":1}}}' },
      fs,
    });
    expect(legacy.problems.filter((p) => p.subject === "PROXY_CONFIG")).toEqual([]);
  });
});
