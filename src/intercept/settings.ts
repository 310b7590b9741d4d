/**
 * Turns configuration into planner settings: the proxy's uid and gid (ENVOY_UID / ENVOY_GID, else ENVOY_USER looked
 * up in /etc/passwd, read through the FileSystem port and relocated under ISTIO_VM_ROOT) and the checks the registry
 * types cannot make on their own.
 */
import { join } from "node:path";
import type { ConfigValues } from "../config/registry.js";
import { parseResolvConf } from "../dns/resolv-conf.js";
import { AgentError, ConfigError } from "../platform/errors.js";
import type { FileSystem } from "../platform/fs.js";
import type { InterceptionSettings, ProxyIds } from "./planner.js";
import { invalidInterfaces, settingsFromConfig } from "./planner.js";

export interface PasswdEntry {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

/** Parses passwd(5) lines; malformed lines are skipped, as getpwnam does. */
export function parsePasswd(text: string): PasswdEntry[] {
  const entries: PasswdEntry[] = [];
  for (const line of text.split("\n")) {
    const fields = line.split(":");
    const [name, , uid, gid] = fields;
    if (fields.length < 4 || name === undefined || name === "" || name.startsWith("#")) continue;
    if (uid === undefined || gid === undefined || !/^\d+$/.test(uid) || !/^\d+$/.test(gid)) continue;
    entries.push({ name, uid: Number(uid), gid: Number(gid) });
  }
  return entries;
}

export function passwdPath(values: ConfigValues): string {
  return values.ISTIO_VM_ROOT === "" ? "/etc/passwd" : join(values.ISTIO_VM_ROOT, "etc/passwd");
}

export async function resolveProxyIds(values: ConfigValues, fs: FileSystem): Promise<ProxyIds> {
  if (values.ENVOY_UID.length > 0) {
    const gids = values.ENVOY_GID.length > 0 ? values.ENVOY_GID : values.ENVOY_UID;
    return { uids: values.ENVOY_UID, gids, source: "ENVOY_UID" };
  }
  const path = passwdPath(values);
  const text = await fs.readTextIfExists(path);
  const user = values.ENVOY_USER;
  const entry = text === undefined ? undefined : parsePasswd(text).find((e) => e.name === user);
  if (entry === undefined) {
    throw new AgentError({
      code: "PROXY_USER_MISSING",
      kind: "config",
      subject: user,
      message: `the proxy user '${user}' (ENVOY_USER) does not exist in ${path}, so its traffic cannot be excluded from capture`,
      hint:
        `create it (the package does: useradd --system --home-dir /var/lib/istio ${user}), ` +
        "set ENVOY_USER to the user Envoy runs as, or set ENVOY_UID (and ENVOY_GID) to numeric ids",
    });
  }
  return {
    uids: [entry.uid],
    gids: values.ENVOY_GID.length > 0 ? values.ENVOY_GID : [entry.gid],
    source: `user ${user} (${path})`,
  };
}

/** Settings for the planner; throws ConfigError for bad interface names and AgentError for a missing proxy user. */
export async function interceptionSettings(values: ConfigValues, fs: FileSystem): Promise<InterceptionSettings> {
  const proxy = await resolveProxyIds(values, fs);
  // DNS capture follows resolv.conf's nameservers, as the proxy's upstreams do (src/dns/component.ts).
  const dnsOn = values.ISTIO_CONTROL_PLANE === "istiod" && values.ISTIO_META_DNS_CAPTURE;
  const resolv = dnsOn ? parseResolvConf((await fs.readTextIfExists(values.ISTIO_RESOLV_CONF)) ?? "") : undefined;
  const settings = settingsFromConfig(values, proxy, resolv?.addresses);
  const bad = invalidInterfaces(settings.excludeInterfaces);
  if (bad.length > 0) {
    throw new ConfigError(
      bad.map((name) => ({
        subject: "ISTIO_EXCLUDE_INTERFACES",
        message: `'${name}' is not an interface name (at most 15 letters, digits, '_', '.', '-', ':' or '@'; a final '+' matches a prefix)`,
      })),
    );
  }
  return settings;
}
