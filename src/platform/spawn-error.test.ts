import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createChildSpawner } from "./child.js";
import { nodeProcessRunner } from "./process.js";

const dir = mkdtempSync(join(tmpdir(), "spawn-error-"));
const missing = join(dir, "no-such-command");
const notExecutable = join(dir, "not-executable");
writeFileSync(notExecutable, "#!/bin/sh\nexit 0\n", { mode: 0o644 });

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("a command that cannot be started", () => {
  it("short-lived: COMMAND_NOT_FOUND with the package hint, SPAWN_FAILED without one", async () => {
    await expect(nodeProcessRunner.run(missing, [])).rejects.toMatchObject({
      code: "COMMAND_NOT_FOUND",
      subject: missing,
      hint: `install the package that provides ${missing}`,
    });
    const failed = await nodeProcessRunner.run(notExecutable, []).catch((e: unknown) => e);
    expect(failed).toMatchObject({ code: "SPAWN_FAILED", subject: notExecutable });
    expect((failed as { hint?: string }).hint).toBeUndefined();
  });

  it("long-lived (Envoy): COMMAND_NOT_FOUND names the setting, SPAWN_FAILED the permissions", async () => {
    const spawner = createChildSpawner();
    const options = { env: {}, onLine: () => undefined };
    await expect(spawner.spawn(missing, [], options)).rejects.toMatchObject({
      code: "COMMAND_NOT_FOUND",
      message: expect.stringContaining(`cannot run ${missing}`) as unknown,
      hint: `install it there or point the setting at the executable (${missing} does not exist)`,
    });
    await expect(spawner.spawn(notExecutable, [], options)).rejects.toMatchObject({
      code: "SPAWN_FAILED",
      hint: "check that the file is executable by the user it runs as",
    });
    expect(spawner.liveGroups()).toEqual([]);
  });
});
