/**
 * `istio-vm completion`: the bash script yargs generates, sourced into a real bash and driven as <TAB> drives it,
 * calling back the built CLI (dist/istio-vm.cjs) for commands, flags and choice values.
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bashComplete } from "../support/bash-completion.js";
import { CLI, runCli } from "../support/cli.js";
import { requirements } from "../support/requirements.js";

const missing = requirements({ tools: ["bash"] });

describe.skipIf(missing !== undefined)("istio-vm completion", () => {
  let dir = "";
  let script = "";

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "istio-vm-completion-"));
    // What the package puts on PATH, played by the bundle.
    writeFileSync(join(dir, "istio-vm"), `#!/bin/sh\nexec '${process.execPath}' '${CLI}' "$@"\n`);
    chmodSync(join(dir, "istio-vm"), 0o755);
    const printed = await runCli(["completion"]);
    expect(printed.code).toBe(0);
    expect(printed.stderr).toBe("");
    script = join(dir, "istio-vm.bash");
    writeFileSync(script, printed.stdout);
  });

  afterAll(() => {
    if (dir !== "") rmSync(dir, { recursive: true, force: true });
  });

  it("prints a bash script that registers a completion function for istio-vm", () => {
    expect(bashComplete(script, dir, [""])).toEqual(expect.arrayContaining(["agent", "certs", "check", "completion"]));
  });

  it("completes command names: ce<TAB> → certs, cl<TAB> → cluster-env", () => {
    expect(bashComplete(script, dir, ["ce"])).toEqual(["certs"]);
    expect(bashComplete(script, dir, ["cl"])).toEqual(["cluster-env"]);
  });

  it("completes subcommands and flags", () => {
    expect(bashComplete(script, dir, ["iptables", ""]).sort()).toEqual(["apply", "clean", "plan", "show"]);
    expect(bashComplete(script, dir, ["cluster-env", "--pro"]).sort()).toEqual(["--profile", "--proxy-config"]);
    expect(bashComplete(script, dir, ["--log-"])).toEqual(["--log-level"]);
  });

  it("completes the choice values of --profile and --log-level", () => {
    expect(bashComplete(script, dir, ["dev", "--profile", ""]).sort()).toEqual(["istiod", "legacy", "none"]);
    expect(bashComplete(script, dir, ["cluster-env", "--profile", ""]).sort()).toEqual(["istiod", "legacy"]);
    expect(bashComplete(script, dir, ["dev", "--profile", "le"])).toEqual(["legacy"]);
    expect(bashComplete(script, dir, ["config", "--log-level", "d"])).toEqual(["debug"]);
  });
});
