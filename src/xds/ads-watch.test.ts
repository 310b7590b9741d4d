import { describe, expect, it } from "vitest";
import { FakeClock } from "../../test/fakes/fake-clock.js";
import { startPilotXds } from "../devplane/pilot-xds.js";
import { ObjectStore } from "../devplane/store.js";
import { LatestHealthReport } from "../health/report.js";
import { watchAds } from "./ads-watch.js";
import { HEALTH_INFO_TYPE_URL } from "./protos.js";
import type { XdsNode } from "./protos.js";

const node: XdsNode = {
  id: "sidecar~10.0.0.5~vm1.default~default.svc.cluster.local",
  cluster: "vm.default",
  metadata: { NAMESPACE: "default" },
};

describe("watchAds with an outbox only (the health reports' stream)", () => {
  it("sends the node with the first report, re-sends the last report on reconnect, and resets the backoff after a long-lived stream", async () => {
    const xds = await startPilotXds({ store: new ObjectStore() });
    const clock = new FakeClock();
    const outbox = new LatestHealthReport();
    const disconnects: string[] = [];
    const controller = new AbortController();
    const watching = watchAds(
      {
        clock,
        connection: () => Promise.resolve({ target: xds.address, node }),
        outbox,
        onDisconnect: (reason) => disconnects.push(reason),
      },
      controller.signal,
    );
    const health = () => xds.events.filter((e) => e.kind === "health");
    try {
      outbox.report({ healthy: true });
      await expect.poll(() => health().length).toBe(1);
      expect(xds.events.find((e) => e.kind === "health")?.nodeId).toBe(node.id);

      // The stream lived a minute, then the server resets it at the next request: back to the initial backoff.
      clock.advance(60_000);
      xds.setFault("stream-reset");
      outbox.report({ healthy: false, message: "down" });
      await clock.nextTimer();
      expect(disconnects).toHaveLength(1);
      expect(clock.delays.at(-1)).toBeLessThanOrEqual(1200);
      // The reconnect carries the last report at once (and is reset again, having lived no time: the backoff grows).
      clock.advance(1200);
      await expect.poll(() => disconnects.length).toBe(2);
      await clock.nextTimer();
      expect(clock.delays.at(-1)).toBeGreaterThanOrEqual(1600);
      xds.setFault("none");
      clock.advance(2400);
      await expect.poll(() => health().at(-1)?.detail).toBe("down");
      expect(xds.events.filter((e) => e.kind === "reset").map((e) => e.typeUrl)).toEqual([
        HEALTH_INFO_TYPE_URL,
        HEALTH_INFO_TYPE_URL,
      ]);
    } finally {
      controller.abort();
      await watching;
      await xds.close();
    }
  });
});
