/** The certificate loop as a component of `istio-vm agent` (wired by src/agent/components.ts). */
import { randomBytes } from "node:crypto";
import type { ComponentFactory } from "../agent/component.js";
import { nodeLinkFileSystem } from "../platform/links.js";
import { CertificateLoop } from "./loop.js";
import { DEFAULT_BACKOFF } from "./schedule.js";
import { createRenewContext, renewalPolicy, reprovisionHint } from "./setup.js";

/** Uniform in [0, 1) from the CSPRNG: jitter must differ between VMs cloned from one image. */
export function cryptoRandom(): number {
  return randomBytes(6).readUIntBE(0, 6) / 2 ** 48;
}

export const certificateComponent: ComponentFactory = (deps) =>
  new CertificateLoop({
    context: () =>
      createRenewContext(deps.loaded, {
        fs: deps.fs,
        links: nodeLinkFileSystem,
        runner: deps.runner,
        clock: deps.clock,
        uid: process.getuid?.(),
      }),
    renewal: renewalPolicy(deps.config),
    backoff: DEFAULT_BACKOFF,
    random: cryptoRandom,
    logger: deps.logger.child("certs"),
    metrics: deps.metrics,
    events: deps.events,
    reprovisionHint: reprovisionHint(deps.config),
  });
