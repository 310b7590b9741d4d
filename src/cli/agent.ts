import type { CommandModule } from "yargs";
import { processSignals, runAgent } from "../agent/agent.js";
import { AGENT_COMPONENTS } from "../agent/components.js";
import type { ConfigProblem } from "../platform/errors.js";
import { portsOf } from "../platform/ports.js";
import { ConfigError, describeError } from "../platform/errors.js";
import { programVersion } from "../version.js";
import type { CommandRuntime } from "./context.js";

export function agentCommand(runtime: () => CommandRuntime): CommandModule<object, object> {
  return {
    command: "agent",
    describe: "Run the VM agent: certificates, traffic capture and Envoy (the daemon of istio-vm-agent.service)",
    builder: (y) =>
      y
        .epilogue(
          "Normally started by systemd (`systemctl start istio-vm-agent`). Reads cluster.env and sidecar.env " +
            "(see `istio-vm config`), serves /healthz/ready and /metrics on 127.0.0.1:STATUS_PORT (15020), and " +
            "talks to systemd over sd_notify: READY=1 once the agent runs (it does not wait for the certificate, " +
            "capture or Envoy), STATUS= what it waits for or a one-line summary, WATCHDOG=1, " +
            "RELOADING=1 on SIGHUP (re-reads the configuration), STOPPING=1 on SIGTERM. Exit codes: 0 after a clean " +
            "stop, 1 on a failure, 2 on an invalid configuration (every problem is logged). /healthz/ready answers 200 " +
            "only once the VM is in the mesh; `istio-vm check --wait` waits for that.",
        )
        .example("$0 agent", "run in the foreground (as systemd does)")
        .example("ISTIO_VM_ROOT=/tmp/vm $0 agent --log-level debug", "run against files under /tmp/vm"),
    handler: async () => {
      const rt = runtime();
      process.title = "istio-vm agent";
      const onCrash = (error: unknown): void => {
        rt.logger.error("agent crashed", { error: describeError(error) });
        // process.exit runs the synchronous exit hooks (the Envoy supervisor kills its process groups there).
        process.exit(1);
      };
      process.on("uncaughtException", onCrash);
      process.on("unhandledRejection", onCrash);
      const notifier = rt.notifier();
      let invalid: readonly ConfigProblem[] | undefined;
      try {
        rt.exitCode = await runAgent({
          ...portsOf(rt),
          logger: rt.logger,
          notifier,
          signals: processSignals,
          components: AGENT_COMPONENTS,
          version: programVersion(),
          onInvalidConfig: (problems) => {
            invalid = problems;
          },
        });
      } finally {
        process.off("uncaughtException", onCrash);
        process.off("unhandledRejection", onCrash);
      }
      // The journal has every problem already; --json callers get them as the one JSON document on stdout.
      if (invalid !== undefined && rt.options.json) throw new ConfigError(invalid);
    },
  };
}
