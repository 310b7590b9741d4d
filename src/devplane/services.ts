/**
 * The dev services `istio-vm dev` starts next to its Kubernetes API (kube-dns, the Istio CA, Pilot, ...). To attach a
 * server, implement `DevService` (see the contract at the top of dev-plane.ts) and add it here: one import, one entry.
 */
import type { DevService } from "./dev-plane.js";
import { devCaService } from "./ca-service.js";
import { kubeDnsDevService } from "./kube-dns.js";
import { pilotDevService } from "./pilot-service.js";

export const DEV_SERVICES: readonly DevService[] = [kubeDnsDevService(), pilotDevService(), devCaService()];
