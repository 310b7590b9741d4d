/** Turns "permission denied" on the certificate files into an error that says who may read them. */
import { AgentError } from "../platform/errors.js";

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
