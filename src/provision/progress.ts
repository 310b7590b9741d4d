/**
 * How `setup` shows progress: on a terminal, one line per host redrawn in place (ANSI cursor movement); otherwise
 * one plain line per change of phase, fit for logs and CI. Both are pure renderers of HostStatus values.
 */
import type { HostPhase, HostStatus } from "./setup.js";

const LABEL: Record<HostPhase, string> = {
  queued: "queued",
  checking: "checking",
  copying: "copying",
  installing: "installing",
  waiting: "retrying",
  done: "ok",
  failed: "FAILED",
};
const SPINNER = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

function seconds(status: HostStatus, nowMs: number): string {
  if (status.startedMs === undefined) return "";
  return `${(((status.endedMs ?? nowMs) - status.startedMs) / 1000).toFixed(1)}s`;
}

function clip(text: string, width: number): string {
  return text.length <= width ? text : `${text.slice(0, Math.max(0, width - 1))}…`;
}

/** One plain line for a status change (non-terminal output). */
export function renderPlainLine(status: HostStatus, nowMs: number): string {
  const attempt = status.attempt > 1 ? ` (attempt ${status.attempt})` : "";
  const time = status.phase === "done" || status.phase === "failed" ? ` after ${seconds(status, nowMs)}` : "";
  const detail = status.detail === "" ? "" : `: ${status.detail}`;
  return `${status.host}: ${LABEL[status.phase]}${attempt}${time}${detail}`;
}

/** The live frame: a header with counts and one line per host, each at most `width` columns. */
export function renderFrame(
  statuses: readonly HostStatus[],
  options: { readonly nowMs: number; readonly tick: number; readonly width: number },
): string[] {
  const done = statuses.filter((s) => s.phase === "done").length;
  const failed = statuses.filter((s) => s.phase === "failed").length;
  const hostWidth = Math.min(40, Math.max(4, ...statuses.map((s) => s.host.length)));
  const header = `setup: ${done} ok, ${failed} failed, ${statuses.length - done - failed} to go (of ${statuses.length})`;
  const lines = statuses.map((s) => {
    const active = s.phase === "checking" || s.phase === "copying" || s.phase === "installing" || s.phase === "waiting";
    const mark = active
      ? (SPINNER[options.tick % SPINNER.length] ?? "*")
      : s.phase === "done"
        ? "✓"
        : s.phase === "failed"
          ? "✗"
          : "·";
    const attempt = s.attempt > 1 ? ` #${s.attempt}` : "";
    const line = `${mark} ${s.host.padEnd(hostWidth)}  ${(LABEL[s.phase] + attempt).padEnd(13)} ${seconds(s, options.nowMs).padStart(6)}  ${s.detail}`;
    return clip(line, options.width);
  });
  return [clip(header, options.width), ...lines];
}

/** Moves the cursor back over the previous frame and draws the next one (each line cleared first). */
export function redraw(previousLines: number, frame: readonly string[]): string {
  const up = previousLines > 0 ? `\x1b[${previousLines}A` : "";
  return `${up}${frame.map((l) => `\r\x1b[2K${l}`).join("\n")}\n`;
}
