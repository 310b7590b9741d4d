import { describe, expect, it } from "vitest";
import type { EnvoyCommandConfig } from "./command-line.js";
import { envoyCommand, envoyLinePriority, parseAgentFlags } from "./command-line.js";

const CONFIG: EnvoyCommandConfig = {
  ENVOY_DRAIN_DURATION: 2000,
  ENVOY_PARENT_SHUTDOWN_DURATION: 3000,
  ENVOY_BASE_ID: 0,
  ENVOY_LOG_LEVEL: "warning",
  ISTIO_AGENT_FLAGS: "",
  ISTIO_SERVICE: "istio-proxy",
  ISTIO_CONTROL_PLANE: "legacy",
  ENVOY_XDS_API: "v3",
};
const NODE = "sidecar~10.150.0.5~demo-vm-1.default~default.svc.cluster.local";

describe("envoyCommand", () => {
  it("is the command line the legacy docs show, plus base id, level and log format", () => {
    const c = envoyCommand({
      config: CONFIG,
      epoch: 1,
      bootstrapPath: "/etc/istio/proxy/envoy-rev1.json",
      serviceNode: NODE,
    });
    expect(c.args.join(" ")).toBe(
      "-c /etc/istio/proxy/envoy-rev1.json --restart-epoch 1 --drain-time-s 2 --parent-shutdown-time-s 3 " +
        `--service-cluster istio-proxy --service-node ${NODE} --base-id 0 -l warning --log-format [%l][%n] [%g:%#] %v`,
    );
    expect(c.warnings).toEqual([]);
  });

  it("v1: the command line pilot-agent 0.3+ ran, with --max-obj-name-len 189 and no --log-format (Envoy < 1.6 rejects it)", () => {
    const c = envoyCommand({
      config: { ...CONFIG, ENVOY_XDS_API: "v1" },
      epoch: 1,
      bootstrapPath: "/etc/istio/proxy/envoy-rev1.json",
      serviceNode: NODE,
    });
    expect(c.args.join(" ")).toBe(
      "-c /etc/istio/proxy/envoy-rev1.json --restart-epoch 1 --drain-time-s 2 --parent-shutdown-time-s 3 " +
        `--service-cluster istio-proxy --service-node ${NODE} --max-obj-name-len 189 --base-id 0 -l warning`,
    );
  });

  it("v2: pilot-agent 0.8's command line, --max-obj-name-len 189 for the outbound|<port>||<host> names", () => {
    const c = envoyCommand({
      config: { ...CONFIG, ENVOY_XDS_API: "v2" },
      epoch: 1,
      bootstrapPath: "/etc/istio/proxy/envoy-rev1.json",
      serviceNode: NODE,
    });
    expect(c.args.join(" ")).toBe(
      "-c /etc/istio/proxy/envoy-rev1.json --restart-epoch 1 --drain-time-s 2 --parent-shutdown-time-s 3 " +
        `--service-cluster istio-proxy --service-node ${NODE} --max-obj-name-len 189 --base-id 0 -l warning ` +
        "--log-format [%l][%n] [%g:%#] %v",
    );
  });

  it("istiod profile: no --service-cluster, so the bootstrap's node.cluster (Istio's rules) is the one Envoy uses", () => {
    const c = envoyCommand({
      config: { ...CONFIG, ISTIO_CONTROL_PLANE: "istiod", ISTIO_SERVICE: "" },
      epoch: 0,
      bootstrapPath: "/b.json",
      serviceNode: NODE,
    });
    expect(c.args).not.toContain("--service-cluster");
    expect(c.args).toContain("--service-node");
  });

  it("rounds durations up to whole seconds and keeps the parent alive past its drain", () => {
    const c = envoyCommand({
      config: { ...CONFIG, ENVOY_DRAIN_DURATION: 4500, ENVOY_PARENT_SHUTDOWN_DURATION: 3000 },
      epoch: 0,
      bootstrapPath: "/b.json",
      serviceNode: NODE,
    });
    expect(c.drainSeconds).toBe(5);
    expect(c.parentShutdownSeconds).toBe(6);
    expect(c.warnings[0]).toContain("must exceed ENVOY_DRAIN_DURATION");
  });

  it("takes --proxyLogLevel from ISTIO_AGENT_FLAGS and says what else it ignored", () => {
    const c = envoyCommand({
      config: { ...CONFIG, ISTIO_AGENT_FLAGS: "--proxyLogLevel debug --zipkinAddress zipkin:9411" },
      epoch: 0,
      bootstrapPath: "/b.json",
      serviceNode: NODE,
    });
    expect(c.args).toContain("debug");
    expect(c.logLevel).toBe("debug");
    expect(c.warnings).toEqual([
      "ISTIO_AGENT_FLAGS: only --proxyLogLevel is honoured; ignored: --zipkinAddress zipkin:9411",
    ]);
    expect(parseAgentFlags("--proxyLogLevel=trace")).toEqual({ logLevel: "trace", ignored: [] });
    expect(parseAgentFlags("--proxyLogLevel loud")).toEqual({ ignored: ["--proxyLogLevel loud"] });
  });
});

describe("envoyLinePriority", () => {
  it("maps Envoy's levels to journal priorities", () => {
    expect(envoyLinePriority("[critical][main] [x.cc:1] boom")).toBe("error");
    expect(envoyLinePriority("[error][upstream] [x.cc:1] e")).toBe("error");
    expect(envoyLinePriority("[warning][config] [x.cc:1] w")).toBe("warn");
    expect(envoyLinePriority("[info][main] [x.cc:1] i")).toBe("info");
    expect(envoyLinePriority("[trace][main] [x.cc:1] t")).toBe("debug");
    expect(envoyLinePriority("#0 0x55d0 backtrace line")).toBe("info");
  });
});
