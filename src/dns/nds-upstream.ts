/**
 * NDS over the agent's xDS proxy (istiod profile with Envoy): the name table subscription rides the proxy's one
 * upstream stream to istiod, with Envoy's node, as Istio's agent sends it (istio/istio pkg/istio-agent/xds_proxy.go).
 * Where no proxy runs (ISTIO_AGENT_COMPONENTS without envoy), the given fallback (the agent's own stream) is used.
 */
import { NAME_TABLE_TYPE_URL, decodeNameTable } from "../xds/nds.js";
import type { NameTableSource } from "./component.js";

export function upstreamNameTableSource(fallback: NameTableSource): NameTableSource {
  return (deps, values, handlers, signal) => {
    const channel = deps.xds?.upstream();
    if (channel === undefined) return fallback(deps, values, handlers, signal);
    deps.logger.child("dns").info("NDS subscription on the xDS proxy's upstream stream to istiod");
    return new Promise<void>((resolve) => {
      const unsubscribe = channel.subscribe({
        typeUrl: NAME_TABLE_TYPE_URL,
        onResponse: (response) => {
          const first = response.resources[0];
          if (first === undefined) return "the NDS response holds no NameTable";
          handlers.onTable(decodeNameTable(first.value));
          return undefined;
        },
        onDisconnect: (reason) => {
          handlers.onDisconnect(reason);
        },
      });
      const done = (): void => {
        unsubscribe();
        resolve();
      };
      if (signal.aborted) done();
      else signal.addEventListener("abort", done, { once: true });
    });
  };
}
