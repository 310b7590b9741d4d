/**
 * Envoy's admin API as the supervisor reads it (src/envoy/supervisor.ts): whether a given epoch is ready. Envoy
 * answers /ready with 200 once its initial configuration is in; during a hot restart the parent keeps answering on the
 * admin port until the child takes it over, so for epoch 1 and later /server_info must name that epoch
 * (`command_line_options.restart_epoch`, envoyproxy/envoy api/envoy/admin/v3/server_info.proto).
 */
import type { HttpClient } from "../platform/http.js";

/** Whether epoch `epoch` answers ready on the admin address (`http://127.0.0.1:<port>`); any failure is "not yet". */
export async function epochReady(http: HttpClient, admin: string, epoch: number): Promise<boolean> {
  try {
    const ready = await http.request({ url: `${admin}/ready`, timeoutMs: 1000 });
    if (ready.status !== 200) return false;
    if (epoch === 0) return true;
    // During a hot restart the parent answers until the child takes the admin port over.
    const info = await http.request({ url: `${admin}/server_info`, timeoutMs: 1000 });
    const parsed = JSON.parse(info.body.toString("utf8")) as { command_line_options?: { restart_epoch?: number } };
    return parsed.command_line_options?.restart_epoch === epoch;
  } catch {
    return false;
  }
}
