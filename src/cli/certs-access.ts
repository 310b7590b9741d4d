/** What `certs status` and `certs renew` share: the renewal context from the configuration, and access errors. */
import type { RenewContext } from "../certs/renew.js";
import { createRenewContext } from "../certs/setup.js";
import type { ConfigValues } from "../config/registry.js";
import { loadConfig, requireValid } from "../config/load.js";
import { AgentError } from "../platform/errors.js";
import type { CommandRuntime } from "./context.js";

/** The valid configuration and the renewal context the agent's loop would use, from the command's ports. */
export async function renewContextFor(rt: CommandRuntime): Promise<{ config: ConfigValues; context: RenewContext }> {
  const loaded = await loadConfig({ env: rt.env, fs: rt.fs });
  const config = requireValid(loaded);
  return { config, context: await createRenewContext(loaded, rt) };
}

/** Turns "permission denied" on the certificate files into an error that says who may read them. */
export async function withCertAccess<T>(dir: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    if (e.code !== "EACCES" && e.code !== "EPERM") throw error;
    throw new AgentError({
      code: "CERT_ACCESS_DENIED",
      message: `permission denied on ${e.path ?? dir}: key.pem is readable only by its owner (mode 0600)`,
      subject: e.path ?? dir,
      hint: "run it as root (sudo) or as the user the agent runs as (ENVOY_USER, istio-proxy)",
      cause: error,
    });
  }
}
