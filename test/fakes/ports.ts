/**
 * The composition root's graph for tests: every port of `SystemPorts` (src/platform/ports.ts), each from `given` or
 * else a stand-in that fails the test when used, so a test names every outside thing it touches. The user database
 * defaults to the passwd file in the test's own file system (relocated under ISTIO_VM_ROOT, as in production);
 * `fakeUsers` stands in for a directory service (LDAP, sssd) that no passwd file shows.
 */
import { join } from "node:path";
import type { SystemPorts } from "../../src/platform/ports.js";
import type { UserDirectory, UserEntry } from "../../src/platform/users.js";
import { passwdFileUsers } from "../../src/platform/users.js";
import { FakeClock } from "./fake-clock.js";
import { MemoryFileSystem } from "./memory-fs.js";

const rejecting = (port: string) => () => Promise.reject(new Error(`this test gave no ${port} port`));

/** An unprivileged uid: nothing is chowned and Envoy runs as the test's own user unless a test says otherwise. */
export const TEST_UID = 1000;
export const TEST_HOSTNAME = "vm-under-test";

export function fakePorts(given: Partial<SystemPorts> = {}): SystemPorts {
  const env = given.env ?? {};
  const fs = given.fs ?? new MemoryFileSystem();
  return {
    env,
    fs,
    // A memory file system holds no links: readers see plain files; writers must be given a real port.
    links: given.links ?? {
      replaceSymlink: rejecting("links"),
      readSymlink: () => Promise.resolve(undefined),
      writeDirectory: rejecting("links"),
      removeTree: rejecting("links"),
    },
    runner: given.runner ?? { run: rejecting("runner") },
    spawner: given.spawner ?? (() => ({ spawn: rejecting("spawner"), liveGroups: () => [] })),
    clock: given.clock ?? new FakeClock(),
    dns: given.dns ?? { lookupSystem: rejecting("dns"), queryServer: rejecting("dns") },
    http: given.http ?? { request: rejecting("http") },
    tls: given.tls ?? { probe: rejecting("tls") },
    tcp: given.tcp ?? rejecting("tcp"),
    users: given.users ?? passwdFileUsers(fs, join(env["ISTIO_VM_ROOT"] ?? "", "/etc/passwd")),
    uid: "uid" in given ? given.uid : TEST_UID,
    hostname: given.hostname ?? (() => TEST_HOSTNAME),
  };
}

/** Users only a directory service knows (NSS beyond /etc/passwd). */
export function fakeUsers(entries: readonly UserEntry[]): UserDirectory {
  return {
    source: "the user database (a directory service in this test)",
    lookup: (name) => Promise.resolve(entries.find((e) => e.name === name)),
  };
}
