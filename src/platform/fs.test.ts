import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, test } from "vitest";
import { nodeFileSystem } from "./fs.js";

const dir = mkdtempSync(join(tmpdir(), "istio-vm-fs-"));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

// readTextIfExists reads a small regular file synchronously and anything else asynchronously: both paths, one answer.
describe("readTextIfExists", () => {
  test("a small regular file: its text", async () => {
    writeFileSync(join(dir, "small.env"), "A=1\n");
    expect(await nodeFileSystem.readTextIfExists(join(dir, "small.env"))).toBe("A=1\n");
  });

  test("a file larger than the synchronous limit: its whole text", async () => {
    const text = "x".repeat(300 * 1024);
    writeFileSync(join(dir, "large"), text);
    expect(await nodeFileSystem.readTextIfExists(join(dir, "large"))).toBe(text);
  });

  test("no file: undefined; a missing directory on the way: undefined", async () => {
    expect(await nodeFileSystem.readTextIfExists(join(dir, "missing"))).toBeUndefined();
    expect(await nodeFileSystem.readTextIfExists(join(dir, "no-dir", "file"))).toBeUndefined();
  });

  test("a directory: the read's error, as before", async () => {
    mkdirSync(join(dir, "a-dir"));
    await expect(nodeFileSystem.readTextIfExists(join(dir, "a-dir"))).rejects.toMatchObject({ code: "EISDIR" });
  });

  test("a FIFO is read without blocking the event loop until its writer comes", async () => {
    const fifo = join(dir, "fifo");
    const made = spawn("mkfifo", [fifo]);
    await new Promise((resolve) => made.on("close", resolve));
    const reading = nodeFileSystem.readTextIfExists(fifo);
    // The writer is started only after the read has returned to the event loop: a synchronous read would hang here.
    const writer = spawn("sh", ["-c", `printf 'from a pipe' > '${fifo}'`]);
    // Listened for at once: the writer may be gone before the read's promise settles, and a `close` that was
    // emitted before a listener exists is never seen (the test then hung until its timeout).
    const writerClosed = new Promise((resolve) => writer.on("close", resolve));
    expect(await reading).toBe("from a pipe");
    await writerClosed;
  });
});
