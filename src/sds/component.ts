/**
 * The agent's `sds` component (istiod profile, runs with the `envoy` component, between certificates and Envoy):
 * serves the store's key, chain and trust bundle on the SDS socket (src/sds/server.ts) and pushes them again on
 * every `certificates-changed`, so a renewal reaches Envoy without a restart. Ready once it listens and serves a
 * certificate; its status says how many Envoy streams hold the current version.
 */
import type { AgentComponent, AgentDeps, ComponentFactory, ComponentStatus } from "../agent/component.js";
import type { Counter } from "../agent/metrics.js";
import { CertStore } from "../certs/store.js";
import type { ConfigValues } from "../config/registry.js";
import { describeError } from "../platform/errors.js";
import type { FileOwner } from "../platform/fs.js";
import { SdsServer } from "./server.js";
import { sdsSocketPath, usesSds } from "./socket.js";

/** Envoy's user when the agent runs as root (it then starts Envoy as ENVOY_USER); undefined: the agent's own. */
export async function envoyOwner(deps: AgentDeps, uid: number): Promise<FileOwner | undefined> {
  if (uid !== 0) return undefined;
  const entry = await deps.users.lookup(deps.config.ENVOY_USER);
  return entry === undefined ? undefined : { uid: entry.uid, gid: entry.gid };
}

class SdsComponent implements AgentComponent {
  readonly name = "sds";
  readonly #deps: AgentDeps;
  readonly #uid: number;
  #config: ConfigValues;
  #server: SdsServer | undefined;
  #lastError: string | undefined;
  #unsubscribe: (() => void) | undefined;
  #refreshing: Promise<void> = Promise.resolve();

  readonly #counters: { readonly pushes: Counter; readonly acks: Counter; readonly nacks: Counter };

  constructor(deps: AgentDeps, uid: number) {
    this.#deps = deps;
    this.#config = deps.config;
    this.#uid = uid;
    const pushes = deps.metrics.counter(
      "istio_vm_sds_pushes_total",
      "SDS responses sent to Envoy, by reason (request, renewal).",
      ["reason"],
    );
    const acks = deps.metrics.counter("istio_vm_sds_acks_total", "SDS responses Envoy accepted (ACK).");
    const nacks = deps.metrics.counter("istio_vm_sds_nacks_total", "SDS responses Envoy rejected (NACK).");
    deps.metrics.gaugeFn("istio_vm_sds_streams", "Open SDS streams (Envoy's secret subscriptions).", () => {
      return this.#server?.status().streams ?? 0;
    });
    this.#counters = { pushes, acks, nacks };
  }

  async start(): Promise<void> {
    const deps = this.#deps;
    const log = deps.logger.child("sds");
    const { pushes, acks, nacks } = this.#counters;
    const server = new SdsServer({
      socketPath: sdsSocketPath(this.#config),
      fs: deps.fs,
      logger: log,
      ...(await envoyOwner(deps, this.#uid).then((owner) => (owner === undefined ? {} : { owner }))),
      observer: {
        pushed: (reason) => {
          pushes.inc({ reason });
          deps.events.emit("status-changed");
        },
        acked: () => {
          acks.inc();
          deps.events.emit("status-changed");
        },
        nacked: () => {
          nacks.inc();
          deps.events.emit("status-changed");
        },
        streamsChanged: () => {
          deps.events.emit("status-changed");
        },
      },
    });
    this.#server = server;
    await this.#refresh();
    await server.listen();
    this.#unsubscribe = deps.events.on("certificates-changed", () => {
      this.#refreshing = this.#refreshing.then(() => this.#refresh());
    });
  }

  /** Reads the store (key and chain as one pair, then the trust bundle) and serves it. */
  async #refresh(): Promise<void> {
    const server = this.#server;
    if (server === undefined) return;
    const store = new CertStore({ dir: this.#config.OUTPUT_CERTS, fs: this.#deps.fs, links: this.#deps.links });
    try {
      const [pair, rootPem] = [await store.read(), await store.readRoot()];
      if (pair === undefined || rootPem === undefined) {
        this.#lastError = `no ${pair === undefined ? "key and chain" : "trust bundle"} in ${this.#config.OUTPUT_CERTS}`;
        return;
      }
      server.update({ keyPem: pair.keyPem, chainPem: pair.chainPem, rootPem });
      this.#lastError = undefined;
    } catch (error) {
      this.#lastError = `reading ${this.#config.OUTPUT_CERTS}: ${describeError(error)}`;
      this.#deps.logger.child("sds").warn("cannot read the certificates to serve", { error: this.#lastError });
    } finally {
      this.#deps.events.emit("status-changed");
    }
  }

  reload(config: ConfigValues): Promise<void> {
    this.#config = config;
    // A new OUTPUT_CERTS is read at once; the socket stays where Envoy's bootstrap points.
    this.#refreshing = this.#refreshing.then(() => this.#refresh());
    return this.#refreshing;
  }

  async stop(): Promise<void> {
    this.#unsubscribe?.();
    await this.#refreshing;
    await this.#server?.close();
  }

  status(): ComponentStatus {
    const s = this.#server?.status();
    if (s === undefined || !s.listening) return { ready: false, summary: "sds starting" };
    if (s.version === undefined) {
      return { ready: false, summary: `sds has no certificate to serve: ${this.#lastError ?? "not read yet"}` };
    }
    const nack = s.lastNack === undefined ? "" : `, ${s.nacks} NACK(s), last: ${s.lastNack}`;
    const error = this.#lastError === undefined ? "" : `, ${this.#lastError}`;
    return {
      ready: true,
      summary: `sds v${s.version} acked by ${s.ackedStreams}/${s.subscribedStreams} Envoy stream(s)${nack}${error}`,
    };
  }

  /** The chain served as `default` (for tests and the check). */
  servedChain(): string | undefined {
    return this.#server?.servedChain();
  }
}

export const sdsComponent: ComponentFactory = (deps) =>
  usesSds(deps.config) ? new SdsComponent(deps, deps.uid ?? 0) : undefined;
