import { describe, expect, it } from "vitest";
import { COMMANDS, commandName, requestedCommand } from "./commands.js";

describe("the command table", () => {
  it("says what each command's module says (name, positionals, description)", async () => {
    for (const entry of COMMANDS) {
      const module = (await entry.load())(() => {
        throw new Error("not run");
      });
      expect({ command: module.command, describe: module.describe }).toEqual({
        command: entry.command,
        describe: entry.describe,
      });
    }
  });

  it("names each command once", () => {
    const names = COMMANDS.map(commandName);
    expect(new Set(names).size).toBe(names.length);
  });

  it("finds the command argv names, after global flags, not after --", () => {
    expect(requestedCommand(["config", "--changed"])?.command).toBe("config");
    expect(requestedCommand(["--json", "--log-level", "debug", "iptables", "plan"])?.command).toBe("iptables");
    expect(requestedCommand(["setup", "config"])?.command).toBe("setup [hosts..]");
    expect(requestedCommand(["--version"])).toBeUndefined();
    expect(requestedCommand(["--", "config"])).toBeUndefined();
    expect(requestedCommand(["frobnicate"])).toBeUndefined();
  });

  it("bash completion: the words after the program's name", () => {
    expect(requestedCommand(["--get-yargs-completions", "istio-vm", "certs", ""])?.command).toBe("certs [sa] [ns]");
    expect(requestedCommand(["--get-yargs-completions", "istio-vm", ""])).toBeUndefined();
  });
});
