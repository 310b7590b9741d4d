import { describe, expect, it } from "vitest";
import { CaCallError, caServerName, createLegacyCaClient } from "./ca-client.js";

describe("caServerName", () => {
  it("uses the dial host for a DNS name, as both original clients did", () => {
    expect(caServerName({ host: "istio-ca", port: 8060 }, { value: "istio-ca", explicit: false })).toBe("istio-ca");
    expect(
      caServerName(
        { host: "istiod.istio-system.svc", port: 15012 },
        { value: "istiod.istio-system.svc", explicit: false },
      ),
    ).toBe("istiod.istio-system.svc");
  });

  it("uses ISTIOD_SAN when dialing an IP, or when the admin set it explicitly", () => {
    expect(caServerName({ host: "10.0.0.7", port: 15012 }, { value: "istiod.istio-system.svc", explicit: false })).toBe(
      "istiod.istio-system.svc",
    );
    expect(caServerName({ host: "::1", port: 15012 }, { value: "istiod.istio-system.svc", explicit: false })).toBe(
      "istiod.istio-system.svc",
    );
    expect(
      caServerName({ host: "lb.example.com", port: 15012 }, { value: "istiod.istio-system.svc", explicit: true }),
    ).toBe("istiod.istio-system.svc");
  });
});

describe("legacy client", () => {
  it("refuses to send a token: the legacy CA authenticates VMs only by their certificate", async () => {
    const client = createLegacyCaClient({
      address: { host: "127.0.0.1", port: 1 },
      serverName: "istio-ca",
      rootPem: "",
      timeoutMs: 100,
    });
    const error = await client
      .sign({ csrPem: "x", ttlMs: 1, credential: { kind: "token", token: "t" } })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CaCallError);
    expect((error as CaCallError).reason).toBe("unauthenticated");
  });
});
