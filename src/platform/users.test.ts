import { describe, expect, it } from "vitest";
import { MemoryFileSystem } from "../../test/fakes/memory-fs.js";
import { requirements } from "../../test/support/requirements.js";
import { AgentError } from "./errors.js";
import { nodeProcessRunner } from "./process.js";
import { nssUsers, parsePasswd, passwdFileUsers, systemUsers } from "./users.js";

const missing = requirements({ tools: ["getent"] });

describe.skipIf(missing !== undefined)("nssUsers: getent passwd on this machine", () => {
  const users = nssUsers(nodeProcessRunner);

  it("finds root and nobody through NSS", async () => {
    expect(await users.lookup("root")).toEqual({ name: "root", uid: 0, gid: 0 });
    const nobody = await users.lookup("nobody");
    expect(nobody?.name).toBe("nobody");
    expect(nobody?.uid).toBe(65534);
  });

  it("a name NSS does not know is undefined (getent exit 2), not an error", async () => {
    expect(await users.lookup("istio-vm-no-such-user")).toBeUndefined();
  });

  it("a number is a name, never a uid (getent passwd 0 answers root)", async () => {
    expect(await users.lookup("0")).toBeUndefined();
  });

  it("a name that starts with a dash is not taken for an option", async () => {
    expect(await users.lookup("-x")).toBeUndefined();
  });
});

describe("nssUsers: failures", () => {
  it("a getent that fails otherwise is an error with a hint", async () => {
    const users = nssUsers({
      run: () => Promise.resolve({ code: 1, signal: null, stdout: "", stderr: "Unknown database", timedOut: false }),
    });
    const error = await users.lookup("istio-proxy").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AgentError);
    expect((error as AgentError).code).toBe("USER_LOOKUP_FAILED");
    expect((error as AgentError).hint).toMatch(/nsswitch/);
  });
});

describe("passwd files", () => {
  it("skips malformed lines as getpwnam does", () => {
    expect(
      parsePasswd("#c\nbad\nx:x:a:1::/:/bin/sh\nistio-proxy:x:998:997::/var/lib/istio:/usr/sbin/nologin\n"),
    ).toEqual([{ name: "istio-proxy", uid: 998, gid: 997 }]);
  });

  it("ISTIO_VM_ROOT relocates the lookup to <root>/etc/passwd; otherwise NSS", async () => {
    const fs = new MemoryFileSystem({ "/vm/etc/passwd": "envoy:x:1337:1337::/:/bin/false\n" });
    const relocated = systemUsers({ ISTIO_VM_ROOT: "/vm" }, fs, nodeProcessRunner);
    expect(relocated.source).toBe("/vm/etc/passwd");
    expect(await relocated.lookup("envoy")).toEqual({ name: "envoy", uid: 1337, gid: 1337 });
    expect(await passwdFileUsers(fs, "/etc/passwd").lookup("envoy")).toBeUndefined();
    expect(systemUsers({}, fs, nodeProcessRunner).source).toBe("the user database (getent passwd)");
  });
});
