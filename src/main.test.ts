import { describe, expect, it } from "vitest";
import { RecordingNotifier } from "../test/fakes/notifier.js";
import { fakePorts } from "../test/fakes/ports.js";
import type { CommandContext } from "./cli/context.js";
import { main } from "./main.js";
import type { ProcessRunner } from "./platform/process.js";

/** Processes that fail the way a bug would: a plain Error, not one of ours. */
const brokenRunner: ProcessRunner = {
  run: () => Promise.reject(new Error("process table on fire")),
};

async function run(argv: readonly string[]) {
  let out = "";
  let err = "";
  const context: CommandContext = {
    ...fakePorts({ env: { PATH: "/usr/bin:/bin" }, runner: brokenRunner }),
    notifier: () => new RecordingNotifier(),
    out: (text) => (out += text),
    err: (text) => (err += text),
    isTty: false,
  };
  const code = await main(argv, context);
  return { code, out, err };
}

describe("main: errors to exit codes and output", () => {
  it("an unexpected error is exit 1, one line and a hint, without a stack trace", async () => {
    const result = await run(["iptables", "clean"]);
    expect(result.code).toBe(1);
    expect(result.err).toBe(
      "istio-vm: process table on fire\n  hint: run again with --log-level debug for the details\n",
    );
  });

  it("--log-level debug adds the stack trace", async () => {
    const result = await run(["iptables", "clean", "--log-level", "debug"]);
    expect(result.code).toBe(1);
    expect(result.err).toMatch(/^istio-vm: process table on fire\n/);
    expect(result.err).toMatch(/^\s+at /m);
  });

  it("under --json an unexpected error is JSON on stdout", async () => {
    const result = await run(["iptables", "clean", "--json"]);
    expect(result.code).toBe(1);
    expect(JSON.parse(result.out)).toEqual({ error: { code: "INTERNAL", message: "process table on fire" } });
  });

  it("a flag without its value is a usage error naming the flag and the command's help", async () => {
    const result = await run(["certs", "renew", "--trust-domain"]);
    expect(result.code).toBe(2);
    expect(result.err).toBe("istio-vm: --trust-domain needs a value\n  hint: see `istio-vm certs renew --help`\n");
  });

  it("a number flag given a word is a usage error", async () => {
    const result = await run(["envoy", "bootstrap", "--epoch", "two", "--json"]);
    expect(result.code).toBe(2);
    expect(JSON.parse(result.out)).toEqual({
      error: { code: "USAGE", message: "--epoch needs a number", hint: "see `istio-vm envoy bootstrap --help`" },
    });
  });

  it("--version, also as JSON and after a command", async () => {
    expect((await run(["--version"])).out).toMatch(/^\d+\.\d+\.\d+\S*\n$/);
    const json = await run(["config", "--version", "--json"]);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.out)).toEqual({ version: expect.stringMatching(/^\d+\.\d+\.\d+/) as unknown });
  });
});
