/**
 * The CLI's error contract, for every command the CLI lists (subcommands included): no arguments where some are
 * required, a flag without its value, an unknown flag and a bad value each exit 2 with one line and a hint, never a
 * stack trace; with --json, standard output is one valid JSON document. The command list and each command's options
 * are read from the built CLI's --help, so a new command or option is covered without touching this file; a new
 * command without a bad-value case below fails the test until it gets one.
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { CliResult } from "../support/cli.js";
import { runCli } from "../support/cli.js";

const root = mkdtempSync(join(tmpdir(), "istio-vm-cli-errors-"));
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

/** Nothing on this machine is read: an empty VM root, an empty home, no kubeconfig. */
const env: NodeJS.ProcessEnv = {
  PATH: process.env["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin",
  HOME: join(root, "home"),
  ISTIO_VM_ROOT: join(root, "vm"),
  KUBECONFIG: join(root, "no-such-kubeconfig"),
  LANG: "C.UTF-8",
};

/** Options every command has (tested once, at the top level, by cli.test.ts). */
const GLOBAL_OPTIONS = new Set(["json", "log-level", "version", "help"]);

interface OptionInfo {
  readonly name: string;
  /** The option's whole help entry: the same text in two commands is the same definition (a shared helper). */
  readonly entry: string;
  /** boolean, string, number, array, or choices. */
  readonly type: string;
  readonly required: boolean;
}

interface CommandInfo {
  /** `certs renew` → ["certs", "renew"]. */
  readonly path: readonly string[];
  /** Positionals written `<name>` (or `<name..>`) in the usage line. */
  readonly requiredPositionals: readonly string[];
  readonly options: readonly OptionInfo[];
  readonly hasSubcommands: boolean;
}

function section(help: string, title: string): string {
  const start = help.indexOf(`\n${title}:\n`);
  if (start === -1) return "";
  const rest = help.slice(start + title.length + 3);
  const end = rest.search(/\n[A-Z][A-Za-z ]*:\n/);
  return end === -1 ? rest : rest.slice(0, end);
}

/** The options of one --help page: an entry starts with `  -x, --name` or `      --name` and runs to the next. */
function parseOptions(help: string): OptionInfo[] {
  const entries = section(help, "Options").split(/\n(?= {2}(?:-\w, | {4})--[\w-]+)/);
  const options: OptionInfo[] = [];
  for (const entry of entries) {
    const name = /^ {2}(?:-\w, | {4})--([\w-]+)/.exec(entry.replace(/^\n/, ""))?.[1];
    if (name === undefined || GLOBAL_OPTIONS.has(name)) continue;
    const type = /\[(boolean|string|number|array|choices)\b/.exec(entry)?.[1];
    if (type === undefined) throw new Error(`no type in the help of --${name}: ${entry}`);
    options.push({ name, type, required: /\[required\]/.test(entry), entry: entry.replace(/\s+/g, " ").trim() });
  }
  return options;
}

async function help(path: readonly string[]): Promise<string> {
  const result = await runCli([...path, "--help"], { env });
  if (result.code !== 0) throw new Error(`istio-vm ${path.join(" ")} --help exited ${String(result.code)}`);
  return result.stdout;
}

/** Every command and subcommand, from the CLI's own --help pages. */
async function listCommands(path: readonly string[] = []): Promise<CommandInfo[]> {
  const page = await help(path);
  const prefix = ["istio-vm", ...path].join(" ");
  const names = section(page, "Commands")
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line.startsWith(`${prefix} `))
    .map((line) => line.slice(prefix.length + 1).split(" ")[0] ?? "");
  const found: CommandInfo[] = [];
  if (path.length > 0) {
    const usage = page.split("\n")[0] ?? "";
    found.push({
      path,
      requiredPositionals: [...usage.matchAll(/<([\w-]+)(?:\.\.)?>/g)].map((m) => m[1] ?? ""),
      options: parseOptions(page),
      hasSubcommands: names.length > 0,
    });
  }
  for (const name of names) found.push(...(await listCommands([...path, name])));
  return found;
}

interface Case {
  readonly args: readonly string[];
  readonly env?: NodeJS.ProcessEnv;
}

/**
 * A bad value per command, one that must be refused before anything starts (no network, no kernel, no server).
 * Generic bad values (a number flag given "abc", a choices flag given a value not in the list) are added for every
 * command on top of these.
 */
function badValues(files: {
  readonly zero: string;
  readonly dir: string;
  readonly junk: string;
  readonly fromZero: string;
}): Record<string, readonly Case[]> {
  const kubeconfigs = (args: readonly string[]): Case[] => [
    { args: [...args, "--kubeconfig", files.zero] },
    { args: [...args, "--kubeconfig", files.dir] },
    { args: [...args, "--kubeconfig", files.junk] },
    { args: [...args, "--kubeconfig", join(root, "missing.kubeconfig")] },
  ];
  const badCidr = { ISTIO_SERVICE_CIDR: "10.0.0.0/33" };
  return {
    agent: [{ args: [], env: badCidr }],
    config: [{ args: [], env: badCidr }],
    iptables: [{ args: ["nonsense"] }],
    "iptables plan": [{ args: [], env: badCidr }],
    "iptables apply": [{ args: [], env: badCidr }],
    "iptables clean": [{ args: ["--log-level", "loud"] }],
    "iptables show": [{ args: ["--log-level", "loud"] }],
    envoy: [{ args: ["nonsense"] }],
    "envoy bootstrap": [{ args: ["--epoch", "-1"] }, { args: [], env: badCidr }],
    "cluster-env": kubeconfigs([]),
    dnsmasq: [...kubeconfigs([]), { args: ["--wait", "soon"] }],
    certs: [...kubeconfigs([]), { args: ["not_a/name"] }],
    "certs status": [{ args: [], env: { ISTIO_VM_ROOT: files.zero } }],
    "certs renew": [{ args: [], env: badCidr }],
    register: [...kubeconfigs(["svc", "10.0.0.1", "80"]), { args: ["svc", "not-an-ip", "80"] }],
    deregister: [...kubeconfigs(["svc", "10.0.0.1"]), { args: ["svc", "not-an-ip"] }],
    dev: [
      { args: ["--port", "0", "--write-kubeconfig", files.dir] },
      { args: ["--port", "0", "--write-kubeconfig", join(root, "no-such-dir", "kubeconfig")] },
      { args: ["--lb-ip", "nope"] },
      { args: ["--port", "70000"] },
      { args: ["--service-cidr", "nope"] },
    ],
    check: [{ args: ["--only", "nosuch"] }, { args: ["--timeout", "soon"] }],
    bundle: [
      ...kubeconfigs(["-o", join(root, "b.tgz")]),
      { args: ["-o", join(root, "b.tgz"), "--from", files.zero] },
      { args: ["-o", join(root, "b.tgz"), "--from", files.fromZero, "--no-deb"] },
      { args: ["-o", files.dir, "--from", files.fromZero, "--no-deb"] },
      { args: ["-o", join(root, "b.tgz"), "--no-deb", "--workload-group", "wg", "--probe", "{"] },
      { args: ["-o", join(root, "b.tgz"), "--no-deb", "--workload-group", "Not_A_Name"] },
      { args: ["-o", join(root, "b.tgz"), "--no-deb", "--ports", "http:99999"] },
    ],
    // Commands without value flags: a value no flag takes, and an unknown log level.
    uninstall: [{ args: ["extra-argument"] }, { args: ["--log-level", "loud"] }],
    completion: [{ args: ["extra-argument"] }, { args: ["--log-level", "loud"] }],
    install: [{ args: [files.zero] }, { args: [files.dir] }, { args: [files.junk] }],
    setup: [
      { args: ["x@-oBogusOption=1", "--bundle", files.junk] },
      { args: ["-oProxyCommand=true", "--bundle", files.junk] },
      { args: ["vm1", "--hosts-file", files.zero] },
    ],
  };
}

interface Run {
  readonly name: string;
  readonly args: readonly string[];
  readonly env: NodeJS.ProcessEnv;
}

/**
 * The cases of one command. An option defined once and shared by several commands (the kube options, the bundle
 * options) is given without value and with a wrong value in the first command that has it only: the same yargs
 * definition answers the same way everywhere, and each run costs a Node start.
 */
function casesFor(command: CommandInfo, bad: Record<string, readonly Case[]>, seen: Set<string>): Run[] {
  const id = command.path.join(" ");
  const placeholders = command.requiredPositionals.map((p) => (p === "ip" ? "10.0.0.1" : p === "ports" ? "80" : p));
  const requiredOptions = command.options.filter((o) => o.required).flatMap((o) => [`--${o.name}`, join(root, "x")]);
  const cases: Omit<Run, "env">[] = [];
  if (command.requiredPositionals.length > 0 || command.hasSubcommands || requiredOptions.length > 0) {
    cases.push({ name: "no arguments", args: [...command.path] });
  }
  cases.push({ name: "unknown flag", args: [...command.path, ...placeholders, "--no-such-flag"] });
  for (const option of command.options) {
    if (option.type === "boolean" || seen.has(option.entry)) continue;
    seen.add(option.entry);
    cases.push({
      name: `--${option.name} without value`,
      args: [...command.path, ...placeholders, `--${option.name}`],
    });
    const wrong = option.type === "number" ? "abc" : option.type === "choices" ? "no-such-choice" : undefined;
    if (wrong !== undefined) {
      cases.push({
        name: `--${option.name} ${wrong}`,
        args: [...command.path, ...placeholders, ...requiredOptions, `--${option.name}`, wrong],
      });
    }
  }
  const runs: Run[] = cases.map((c) => ({ ...c, env }));
  for (const c of bad[id] ?? []) {
    runs.push({ name: `bad value ${c.args.join(" ")}`, args: [...command.path, ...c.args], env: { ...env, ...c.env } });
  }
  return runs.flatMap((run) => [run, { ...run, name: `${run.name} --json`, args: [...run.args, "--json"] }]);
}

/** Runs `fn` over `items`, `limit` at a time. */
async function mapLimited<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** What is wrong with one run, or undefined when it keeps the contract. */
function violation(run: Run, result: CliResult): string | undefined {
  const json = run.args.includes("--json");
  const output = `${result.stdout}\n${result.stderr}`;
  if (result.code !== 2) return `exit ${String(result.code)}, not 2`;
  if (/^\s+at /m.test(output)) return "a stack trace";
  if (/\b(YError|RangeError|TypeError|SyntaxError|ReferenceError)\b/.test(output)) return "a JavaScript error name";
  if (json) {
    try {
      JSON.parse(result.stdout);
    } catch {
      return "standard output is not one JSON document";
    }
  } else if (output.trim() === "") {
    return "nothing said";
  }
  return undefined;
}

const files = {
  zero: "/dev/zero",
  dir: join(root, "a-directory"),
  junk: join(root, "junk.bin"),
  fromZero: join(root, "from-zero"),
};
mkdirSync(files.dir);
// A --from directory whose cluster.env is /dev/zero and whose kubedns is a directory.
mkdirSync(join(files.fromZero, "kubedns"), { recursive: true });
symlinkSync("/dev/zero", join(files.fromZero, "cluster.env"));
mkdirSync(env["HOME"] ?? "", { recursive: true });
writeFileSync(files.junk, Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 256)));
const bad = badValues(files);
const commands = await listCommands();

describe("the CLI's error contract, for every command", () => {
  it("the command list comes from the CLI and includes subcommands", () => {
    const ids = commands.map((c) => c.path.join(" "));
    expect(ids).toEqual(expect.arrayContaining(["agent", "certs renew", "iptables plan", "envoy bootstrap", "setup"]));
  });

  it("every command has a bad-value case here (a new command needs one)", () => {
    const missing = commands.map((c) => c.path.join(" ")).filter((id) => bad[id] === undefined);
    expect(missing).toEqual([]);
  });

  // Commands run one after the other, the cases of one command a few at a time (the machine has few cores).
  const seen = new Set<string>();
  const table = commands.map((c) => ({ id: c.path.join(" "), runs: casesFor(c, bad, seen) }));
  describe.each(table)("istio-vm $id", ({ runs }) => {
    it("no arguments, a flag without value, an unknown flag, a bad value: exit 2, no stack, JSON under --json", async () => {
      const results = await mapLimited(runs, 4, (run) =>
        runCli(run.args, { env: run.env, timeoutMs: 30_000, cwd: root }),
      );
      const failures = runs.flatMap((run, i) => {
        const result = results[i] as CliResult;
        const what = violation(run, result);
        if (what === undefined) return [];
        const output = `${result.stdout}${result.stderr}`.split("\n").slice(0, 6).join("\n    ");
        return [`istio-vm ${run.args.join(" ")}: ${what}\n    ${output}`];
      });
      expect(failures, `${failures.length} of ${runs.length} runs broke the contract`).toEqual([]);
    });
  });

  it("dev on a port in use: exit 2, names the address and port, suggests --port 0", async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, "127.0.0.1", resolve));
    try {
      const port = (holder.address() as AddressInfo).port;
      const text = await runCli(["dev", "--port", String(port)], { env, timeoutMs: 30_000 });
      expect(text.code).toBe(2);
      expect(text.stderr).toContain(`istio-vm: cannot listen on 127.0.0.1:${port}: it is already in use`);
      expect(text.stderr).toContain("another `istio-vm dev`");
      expect(text.stderr).toContain("--port 0");
      expect(text.stderr).not.toMatch(/^\s+at /m);
      const json = await runCli(["dev", "--port", String(port), "--json"], { env, timeoutMs: 30_000 });
      expect(json.code).toBe(2);
      expect(JSON.parse(json.stdout)).toMatchObject({ error: { code: "DEV_LISTEN_EADDRINUSE" } });
    } finally {
      await new Promise((resolve) => holder.close(resolve));
    }
  });

  it("--version --json is JSON", async () => {
    const result = await runCli(["--version", "--json"], { env });
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual({ version: expect.stringMatching(/^\d+\.\d+\.\d+/) as unknown });
  });
});
