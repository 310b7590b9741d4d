import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { fakeUsers } from "../../test/fakes/ports.js";
import { loadConfig, requireValid } from "../config/load.js";
import { AgentError } from "../platform/errors.js";
import { passwdFileUsers } from "../platform/users.js";
import { interceptionSettings } from "./settings.js";

async function values() {
  // /etc/passwd has no istio-proxy: on this VM the user comes from a directory service (LDAP, sssd).
  const fs = new MemoryFileSystem({ "/etc/passwd": "root:x:0:0:root:/root:/bin/bash\n" });
  return { fs, values: requireValid(await loadConfig({ env: { ISTIO_SERVICE_CIDR: "10.96.0.0/12" }, fs })) };
}

describe("the proxy user for interception", () => {
  it("resolves a user that only NSS knows", async () => {
    const { fs, values: v } = await values();
    const users = fakeUsers([{ name: "istio-proxy", uid: 998, gid: 997 }]);
    const settings = await interceptionSettings(v, users, fs);
    expect(settings.proxy).toEqual({
      uids: [998],
      gids: [997],
      source: `user istio-proxy from ${users.source}`,
    });
  });

  it("reading /etc/passwd alone (the old lookup) misses that user: PROXY_USER_MISSING naming where it looked", async () => {
    const { fs, values: v } = await values();
    const error = await interceptionSettings(v, passwdFileUsers(fs, "/etc/passwd"), fs).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).code).toBe("PROXY_USER_MISSING");
    expect((error as AgentError).message).toContain("does not exist in /etc/passwd");
  });
});
