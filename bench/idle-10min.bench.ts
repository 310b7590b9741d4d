/**
 * Issue 14's long idle run: the agent with a valid certificate (a year's validity from the in-process dev CA, so its
 * certificate loop only waits) left alone for BENCH_IDLE_MINUTES (10) real minutes, its RSS, anonymous RSS and CPU
 * sampled every 30 s beside an idle bare runtime's, and its heap at the end; no growth is the goal. Every runtime
 * runs at once (the bundle on this machine's Node and, once built, the single executable), so the run takes the
 * 10 minutes once. `npm run bench -- idle-10min` runs it alone; the full `npm run bench` includes it.
 */
import { NAMESPACE, SERVICE_ACCOUNT, createCertFixture } from "../test/support/cert-fixture.js";
import type { ProcStat, Runtime } from "./agent-support.js";
import {
  dropPageCache,
  mib,
  procStat,
  ratio,
  row,
  runtimes,
  sleep,
  startAgent,
  startIdleBare,
} from "./agent-support.js";

const MINUTES = Number(process.env["BENCH_IDLE_MINUTES"] ?? 10);
const EVERY_MS = 30_000;

const fixture = await createCertFixture({ protocol: "istiod" });
const year = 365 * 24 * 3600_000;
await fixture.installPair({ notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + year) });
await fixture.writeToken();
const withCertificate = [
  "ISTIO_AGENT_COMPONENTS=certificates",
  `OUTPUT_CERTS=${fixture.dir}`,
  `ISTIO_TOKEN_FILE=${fixture.tokenFile}`,
  `CA_ADDR=127.0.0.1:${fixture.server.port}`,
  `POD_NAMESPACE=${NAMESPACE}`,
  `SERVICE_ACCOUNT=${SERVICE_ACCOUNT}`,
  `ENVOY_USER=${process.env["USER"] ?? "root"}`,
  "",
].join("\n");

interface Watched {
  runtime: Runtime;
  agent: Awaited<ReturnType<typeof startAgent>>;
  bare: Awaited<ReturnType<typeof startIdleBare>>;
  samples: { agent: ProcStat; bare: ProcStat }[];
  heapStart: number;
  mark: number;
}

const watched: Watched[] = [];
try {
  for (const runtime of runtimes()) {
    dropPageCache(runtime.files);
    const agent = await startAgent(runtime, withCertificate);
    const bare = await startIdleBare(runtime.bare);
    watched.push({ runtime, agent, bare, samples: [], heapStart: NaN, mark: agent.logMark() });
  }
  // The first sample 30 s after READY=1 (start-up garbage collected), then every 30 s until the end.
  const samples = Math.round((MINUTES * 60_000) / EVERY_MS);
  for (let i = 0; i < samples; i++) {
    await sleep(EVERY_MS);
    for (const w of watched) {
      w.samples.push({ agent: procStat(w.agent.pid), bare: procStat(w.bare.pid) });
      if (i === 0) {
        w.heapStart = await w.agent.heapUsedBytes();
        w.mark = w.agent.logMark();
      }
      process.stderr.write(
        `${w.runtime.label} ${((i + 1) * EVERY_MS) / 1000} s: RSS ${mib(w.samples.at(-1)?.agent.rssKiB ?? NaN)}\n`,
      );
    }
  }
  for (const w of watched) {
    const first = w.samples[0];
    const last = w.samples.at(-1);
    if (first === undefined || last === undefined) continue;
    const rss = w.samples.map((s) => s.agent.rssKiB);
    const heapEnd = await w.agent.heapUsedBytes();
    row({
      table: "idle 10 min",
      case: `agent RSS, 30 s → ${MINUTES} min idle, valid certificate, ${w.runtime.label}`,
      value: `${mib(first.agent.rssKiB)} → ${mib(last.agent.rssKiB)} (max ${mib(Math.max(...rss))})`,
      baseline: `${mib(last.bare.rssKiB)} (idle node -e)`,
      ratio: ratio(last.agent.rssKiB, last.bare.rssKiB),
      note:
        `goal: no growth; ${w.samples.length} samples every 30 s: ${rss.map((k) => (k / 1024).toFixed(1)).join(" ")} MiB; ` +
        `anonymous RSS ${mib(first.agent.anonKiB)} → ${mib(last.agent.anonKiB)}; heap used ${mib(w.heapStart / 1024)} → ${mib(heapEnd / 1024)}`,
    });
    row({
      table: "idle 10 min",
      case: `agent CPU and log lines over ${MINUTES} min idle, valid certificate, ${w.runtime.label}`,
      value: `${(last.agent.cpuSeconds - first.agent.cpuSeconds).toFixed(2)} s, ${w.agent.linesSince(w.mark).length} lines`,
      note: "goal: 0 lines; CPU and lines between the first and the last sample (/proc/<pid>/stat, 10 ms resolution); log level info",
    });
  }
} finally {
  for (const w of watched) {
    await w.agent.stop();
    await w.bare.stop();
  }
  await fixture.close();
}
