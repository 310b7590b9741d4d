/** The certificate loop as a component of `istio-vm agent` (wired by src/agent/components.ts). */
import { randomBytes } from "node:crypto";
import type { AgentComponent, ComponentFactory } from "../agent/component.js";
import type { LoadedConfig } from "../config/load.js";
import type { CertificateLoopSettings } from "./loop.js";
import { CertificateLoop } from "./loop.js";
import { DEFAULT_BACKOFF } from "./schedule.js";
import { createRenewContext, renewalPolicy, reprovisionHint } from "./setup.js";

/** Uniform in [0, 1) from the CSPRNG: jitter must differ between VMs cloned from one image. */
export function cryptoRandom(): number {
  return randomBytes(6).readUIntBE(0, 6) / 2 ** 48;
}

export const certificateComponent: ComponentFactory = (deps) => {
  // The configuration in force; SIGHUP replaces it and the loop re-reads its settings from it.
  let loaded: LoadedConfig = deps.loaded;
  const settings = async (): Promise<CertificateLoopSettings> => {
    const config = loaded.values;
    return {
      context: await createRenewContext(loaded, deps),
      renewal: renewalPolicy(config),
      reprovisionHint: reprovisionHint(config),
      caAddress: loaded.variables.CA_ADDR.raw,
    };
  };
  const loop = new CertificateLoop({
    settings,
    backoff: DEFAULT_BACKOFF,
    random: cryptoRandom,
    logger: deps.logger.child("certs"),
    metrics: deps.metrics,
    events: deps.events,
  });
  const component: AgentComponent = {
    name: loop.name,
    start: (signal) => loop.start(signal),
    stop: () => loop.stop(),
    status: () => loop.status(),
    reload: (_config, next) => {
      loaded = next;
      return loop.reload();
    },
  };
  return component;
};
