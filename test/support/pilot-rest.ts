/** A dev Pilot REST server per test, over a freshly seeded store (the v1 registration and discovery tests). */
import { afterEach, beforeEach } from "vitest";
import type { PilotRestServer } from "../../src/devplane/pilot-rest.js";
import { startPilotRest } from "../../src/devplane/pilot-rest.js";
import type { ObjectStore } from "../../src/devplane/store.js";

export interface PilotRestFixture {
  /** The current test's store and server (read inside a test, not at collection time). */
  readonly store: ObjectStore;
  readonly pilot: PilotRestServer;
}

/** Call inside a `describe`: before each test, `seed()` and a plain-HTTP server on it; after it, the server closes. */
export function pilotRestPerTest(seed: () => ObjectStore): PilotRestFixture {
  let current: { store: ObjectStore; pilot: PilotRestServer } | undefined;
  beforeEach(async () => {
    const store = seed();
    current = { store, pilot: await startPilotRest({ store }) };
  });
  afterEach(async () => {
    await current?.pilot.close();
    current = undefined;
  });
  const now = (): { store: ObjectStore; pilot: PilotRestServer } => {
    if (current === undefined) throw new Error("pilotRestPerTest: read the fixture inside a test");
    return current;
  };
  return {
    get store() {
      return now().store;
    },
    get pilot() {
      return now().pilot;
    },
  };
}
