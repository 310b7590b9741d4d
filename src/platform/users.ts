/**
 * The user database as a port: a user's uid and primary gid by name. In production it asks NSS the way the C
 * library's getpwnam(3) does, through `getent passwd` (glibc), so a proxy user that comes from LDAP or sssd is found
 * as surely as one in /etc/passwd. Under ISTIO_VM_ROOT (tests, the demo, dry runs on a copy) it reads the relocated
 * `<root>/etc/passwd`, as every other default path is relocated. Tests pass `passwdFileUsers` over their own file
 * system, or the fake of test/fakes/ports.ts for users that no passwd file holds.
 */
import { join } from "node:path";
import { AgentError } from "./errors.js";
import type { FileSystem } from "./fs.js";
import type { ProcessRunner } from "./process.js";

export interface UserEntry {
  readonly name: string;
  readonly uid: number;
  /** The primary group. */
  readonly gid: number;
}

export interface UserDirectory {
  /** The user called `name` (never one whose uid is `name`), or undefined when there is none. */
  lookup(name: string): Promise<UserEntry | undefined>;
  /** Where users are looked up, for messages: a passwd file's path, or "the user database (getent passwd)". */
  readonly source: string;
}

/** Parses passwd(5) lines; malformed lines are skipped, as getpwnam does. */
export function parsePasswd(text: string): UserEntry[] {
  const entries: UserEntry[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(":");
    const [name, , uid, gid] = fields;
    if (fields.length < 4 || name === undefined || name === "" || name.startsWith("#")) continue;
    if (uid === undefined || gid === undefined || !/^\d+$/.test(uid) || !/^\d+$/.test(gid)) continue;
    entries.push({ name, uid: Number(uid), gid: Number(gid) });
  }
  return entries;
}

/** The users of one passwd-format file, read at every lookup (a package may create a user meanwhile). */
export function passwdFileUsers(fs: FileSystem, path: string): UserDirectory {
  return {
    source: path,
    async lookup(name) {
      const text = await fs.readTextIfExists(path);
      return text === undefined ? undefined : parsePasswd(text).find((e) => e.name === name);
    },
  };
}

/** getent(1) exit status for "no such key" (glibc, nss/getent.c). */
const GETENT_NOT_FOUND = 2;

/** NSS through `getent passwd NAME`: files, LDAP, sssd, systemd's dynamic users, whatever nsswitch.conf lists. */
export function nssUsers(runner: ProcessRunner): UserDirectory {
  const source = "the user database (getent passwd)";
  return {
    source,
    async lookup(name) {
      // "--": a name that starts with "-" is a name, not an option.
      const result = await runner.run("getent", ["passwd", "--", name], { timeoutMs: 10_000 });
      if (result.code === GETENT_NOT_FOUND) return undefined;
      if (result.code !== 0) {
        throw new AgentError({
          code: "USER_LOOKUP_FAILED",
          subject: name,
          message: `getent passwd ${name} exited ${result.code ?? result.signal ?? "?"}: ${result.stderr.trim() || "no output"}`,
          hint: "check /etc/nsswitch.conf and the directory service it names (sssd, LDAP)",
        });
      }
      // A numeric argument is looked up as a uid: only an entry of that very name counts.
      return parsePasswd(result.stdout).find((e) => e.name === name);
    },
  };
}

/** The real one for this process: NSS, or the relocated passwd file under ISTIO_VM_ROOT. */
export function systemUsers(env: NodeJS.ProcessEnv, fs: FileSystem, runner: ProcessRunner): UserDirectory {
  const root = env["ISTIO_VM_ROOT"] ?? "";
  return root === "" ? nssUsers(runner) : passwdFileUsers(fs, join(root, "etc/passwd"));
}
