import { describe, expect, it } from "vitest";
import { KubeApiError } from "./client.js";
import { retryOnConflict } from "./conflict-retry.js";
import { SteppingClock } from "../../test/fakes/kube-client.js";

const lost = (reason: "Conflict" | "AlreadyExists"): KubeApiError =>
  new KubeApiError({ status: 409, reason, message: `lost: ${reason}`, subject: "endpoints default/web" });

describe("retryOnConflict", () => {
  it("runs again from the start after a lost race, waiting through the clock, and returns the first success", async () => {
    const clock = new SteppingClock();
    const retries: string[] = [];
    const failures = [lost("Conflict"), lost("AlreadyExists")];
    const result = await retryOnConflict(
      {
        clock,
        random: () => 0.5,
        subject: "endpoints default/web",
        onRetry: (e, next) => retries.push(`${e.reason} ${next}`),
      },
      (n) => {
        const failure = failures[n];
        return failure === undefined ? Promise.resolve(`written at attempt ${n}`) : Promise.reject(failure);
      },
    );
    expect(result).toBe("written at attempt 2");
    expect(retries).toEqual(["Conflict 2", "AlreadyExists 3"]);
    expect(clock.sleeps).toHaveLength(2);
  });

  it("gives up after maxAttempts with UPDATE_CONFLICT naming the object, the last error as cause", async () => {
    const error = await retryOnConflict(
      { clock: new SteppingClock(), maxAttempts: 3, subject: "workloadentry default/web-10-0-0-5" },
      () => Promise.reject(lost("Conflict")),
    ).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "UPDATE_CONFLICT", subject: "workloadentry default/web-10-0-0-5" });
    expect((error as Error).message).toContain("(3 attempts)");
    expect((error as Error).cause).toMatchObject({ reason: "Conflict" });
  });

  it("does not retry any other error", async () => {
    let runs = 0;
    const forbidden = new KubeApiError({ status: 403, reason: "Forbidden", message: "no", subject: "x" });
    await expect(
      retryOnConflict({ clock: new SteppingClock(), subject: "x" }, () => {
        runs++;
        return Promise.reject(forbidden);
      }),
    ).rejects.toBe(forbidden);
    expect(runs).toBe(1);
  });
});
