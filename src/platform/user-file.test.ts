import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { AgentError } from "./errors.js";
import { nodeFileSystem } from "./fs.js";
import { readUserText } from "./user-file.js";

const dir = mkdtempSync(join(tmpdir(), "istio-vm-user-file-"));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const options = { what: "hosts file", maxBytes: 1024, hint: "check --hosts-file", code: "HOSTS_FILE" };

async function refusal(path: string): Promise<AgentError> {
  const error = await readUserText(nodeFileSystem, path, options).then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof AgentError)) throw new Error(`expected an AgentError, got ${String(error)}`);
  return error;
}

describe("readUserText", () => {
  it("reads a text file, and answers undefined for a missing one", async () => {
    writeFileSync(join(dir, "ok"), "vm1\nvm2\n");
    expect(await readUserText(nodeFileSystem, join(dir, "ok"), options)).toBe("vm1\nvm2\n");
    expect(await readUserText(nodeFileSystem, join(dir, "missing"), options)).toBeUndefined();
  });

  it("refuses /dev/zero after reading only up to the limit, as a configuration error naming the file", async () => {
    const error = await refusal("/dev/zero");
    expect(error).toMatchObject({
      code: "HOSTS_FILE_INVALID",
      kind: "config",
      subject: "/dev/zero",
      hint: options.hint,
    });
    expect(error.message).toBe("hosts file /dev/zero is larger than 1 KiB: not a hosts file");
  });

  it("refuses a directory, a binary file and invalid UTF-8", async () => {
    expect((await refusal(dir)).message).toContain("is a directory");
    writeFileSync(join(dir, "bin"), Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0, 1]));
    expect((await refusal(join(dir, "bin"))).message).toContain("is binary");
    writeFileSync(join(dir, "latin1"), Buffer.from([0x68, 0xe9, 0x0a]));
    expect((await refusal(join(dir, "latin1"))).message).toContain("is not UTF-8 text");
    writeFileSync(join(dir, "big"), "x".repeat(1025));
    expect((await refusal(join(dir, "big"))).code).toBe("HOSTS_FILE_INVALID");
  });
});
