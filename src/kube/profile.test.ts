import { describe, expect, it } from "vitest";
import { detectProfile, detectRevision, istiodServiceName } from "./profile.js";
import { FakeKubeClient, lbService } from "../../test/fakes/kube-client.js";

function clientWith(...services: string[]): FakeKubeClient {
  const client = new FakeKubeClient();
  for (const name of services) client.store.create("services", lbService("istio-system", name));
  return client;
}

describe("detectProfile", () => {
  it("detects istiod from Service istiod", async () => {
    await expect(detectProfile(clientWith("istiod"), "istio-system")).resolves.toEqual({
      profile: "istiod",
      evidence: "service istio-system/istiod",
      istiodService: "istiod",
    });
  });
  it("detects legacy from Service istio-pilot", async () => {
    await expect(detectProfile(clientWith("istio-pilot"), "istio-system")).resolves.toMatchObject({
      profile: "legacy",
    });
  });
  it("prefers istiod when both exist", async () => {
    await expect(detectProfile(clientWith("istio-pilot", "istiod"), "istio-system")).resolves.toMatchObject({
      profile: "istiod",
    });
  });
  it("names both Services and the namespace when neither exists", async () => {
    const error = await detectProfile(clientWith("istiod"), "other-ns").catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "PROFILE_NOT_DETECTED" });
    expect((error as Error).message).toMatch(/istiod.*istio-pilot.*other-ns/);
  });
  it("skips detection when the profile is given", async () => {
    const client = clientWith();
    await expect(detectProfile(client, "istio-system", "legacy")).resolves.toMatchObject({ profile: "legacy" });
    expect(client.requests).toEqual([]);
  });
});

describe("detectRevision", () => {
  it("finds istiod-<rev>, and names it when missing", async () => {
    const client = clientWith("istiod-1-22");
    await expect(detectRevision(client, "istio-system", "1-22")).resolves.toEqual({
      profile: "istiod",
      evidence: "service istio-system/istiod-1-22",
      istiodService: "istiod-1-22",
    });
    await expect(detectRevision(client, "istio-system", "canary")).rejects.toMatchObject({
      code: "REVISION_NOT_FOUND",
      message: expect.stringContaining('"istiod-canary"') as unknown,
    });
  });
  it("treats the default revision as plain istiod", () => {
    expect(istiodServiceName("default")).toBe("istiod");
    expect(istiodServiceName(undefined)).toBe("istiod");
  });
});
