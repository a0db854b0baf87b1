/** A listener's exception, reported through `onCallbackError`, never thrown into the client. */
export type Listener<T> = (event: T) => void;

/**
 * A small typed event emitter. A listener that throws cannot break the
 * emitter's owner: the exception goes to `onCallbackError` (the owner's
 * `error` event), and from there, if that throws too, to console.error.
 */
export class Emitter<Events extends object> {
  private listeners: { [K in keyof Events]?: Set<Listener<Events[K]>> } = {};

  constructor(private readonly onCallbackError: (error: unknown, event: keyof Events) => void) {}

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    (this.listeners[event] ??= new Set()).add(listener);
    return () => this.off(event, listener);
  }

  off<K extends keyof Events>(event: K, listener: Listener<Events[K]>): void {
    this.listeners[event]?.delete(listener);
  }

  /** The number of listeners of one event (for tests and leak checks). */
  listenerCount(event: keyof Events): number {
    return this.listeners[event]?.size ?? 0;
  }

  protected emit<K extends keyof Events>(event: K, payload: Events[K]): void {
    const set = this.listeners[event];
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(payload);
      } catch (error) {
        reportCallbackError(this.onCallbackError, error, event);
      }
    }
  }

  /** Drops every listener. */
  removeAllListeners(): void {
    this.listeners = {};
  }
}

function reportCallbackError<E>(report: (error: unknown, event: E) => void, error: unknown, event: E): void {
  try {
    report(error, event);
  } catch (again) {
    console.error("clarion: a listener threw", again);
  }
}
