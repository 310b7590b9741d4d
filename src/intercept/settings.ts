/**
 * Turns configuration into planner settings: the proxy's uid and gid (ENVOY_UID / ENVOY_GID, else ENVOY_USER looked
 * up through the users port: NSS on a VM, the relocated passwd file under ISTIO_VM_ROOT) and the checks the registry
 * types cannot make on their own.
 */
import type { ConfigValues } from "../config/registry.js";
import { parseResolvConf } from "../dns/resolv-conf.js";
import { AgentError, ConfigError } from "../platform/errors.js";
import type { FileSystem } from "../platform/fs.js";
import type { UserDirectory } from "../platform/users.js";
import type { InterceptionSettings, ProxyIds } from "./planner.js";
import { invalidInterfaces, settingsFromConfig } from "./planner.js";

export async function resolveProxyIds(values: ConfigValues, users: UserDirectory): Promise<ProxyIds> {
  if (values.ENVOY_UID.length > 0) {
    const gids = values.ENVOY_GID.length > 0 ? values.ENVOY_GID : values.ENVOY_UID;
    return { uids: values.ENVOY_UID, gids, source: "ENVOY_UID" };
  }
  const user = values.ENVOY_USER;
  const entry = await users.lookup(user);
  if (entry === undefined) {
    throw new AgentError({
      code: "PROXY_USER_MISSING",
      kind: "config",
      subject: user,
      message: `the proxy user '${user}' (ENVOY_USER) does not exist in ${users.source}, so its traffic cannot be excluded from capture`,
      hint:
        `create it (the package does: useradd --system --home-dir /var/lib/istio ${user}), ` +
        "set ENVOY_USER to the user Envoy runs as, or set ENVOY_UID (and ENVOY_GID) to numeric ids",
    });
  }
  return {
    uids: [entry.uid],
    gids: values.ENVOY_GID.length > 0 ? values.ENVOY_GID : [entry.gid],
    source: `user ${user} from ${users.source}`,
  };
}

/** Settings for the planner; throws ConfigError for bad interface names and AgentError for a missing proxy user. */
export async function interceptionSettings(
  values: ConfigValues,
  users: UserDirectory,
  fs: FileSystem,
): Promise<InterceptionSettings> {
  const proxy = await resolveProxyIds(values, users);
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
