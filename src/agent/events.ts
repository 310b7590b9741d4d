import { EventEmitter } from "node:events";
import type { AgentEvents } from "./component.js";

type Listener = (...args: unknown[]) => void;

/** The agent's event bus, a typed face on an EventEmitter. */
export function createAgentEvents(): AgentEvents {
  const emitter = new EventEmitter();
  const bus = {
    emit(event: string, ...args: unknown[]): void {
      emitter.emit(event, ...args);
    },
    on(event: string, listener: Listener): () => void {
      emitter.on(event, listener);
      return () => emitter.off(event, listener);
    },
  };
  return bus as AgentEvents;
}
