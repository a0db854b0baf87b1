import { Emitter } from "./emitter.js";
import { ClarionError } from "./errors.js";
import type { Message, RecoveredEvent, SubscriptionEvents, SubscriptionState } from "./types.js";

/** What a Subscription needs from its client. */
export interface SubscriptionHost {
  unsubscribe(subscription: Subscription): void;
}

/**
 * One channel of one client: `client.subscribe(channel)` returns the same
 * object until `unsubscribe()`. It survives reconnects: the client
 * re-subscribes it with `since` = the last id it saw on this channel.
 */
export class Subscription extends Emitter<SubscriptionEvents> {
  private _state: SubscriptionState = "subscribing";
  /** The id of the last message seen on this channel; `since` of the next re-subscribe. */
  lastId: string | null = null;
  /** @internal The subscription token, its source and when it is due for a refresh. */
  token?: string;
  /** @internal */
  getToken?: (channel: string) => Promise<string> | string;
  /** @internal */
  refreshAt?: number;
  /** Subscribed by the server (the connect proxy's backend), which re-subscribes it. */
  server = false;

  constructor(
    readonly channel: string,
    private readonly host: SubscriptionHost,
  ) {
    super((error, event) => {
      if (event === "error") throw error;
      this.emit("error", new ClarionError("callback_error", `a ${String(event)} listener threw: ${error}`, { channel, cause: error }));
    });
  }

  get state(): SubscriptionState {
    return this._state;
  }

  /** Stops the subscription; its listeners are removed after the final `state` event. */
  unsubscribe(): void {
    if (this._state === "unsubscribed") return;
    this.host.unsubscribe(this);
  }

  /** @internal */
  _setState(state: SubscriptionState, reason: string): void {
    if (state === this._state) return;
    const previous = this._state;
    this._state = state;
    this.emit("state", { state, previous, reason });
    if (state === "unsubscribed") this.removeAllListeners();
  }

  /** @internal */
  _message(message: Message): void {
    if (this.lastId === null || message.id > this.lastId) this.lastId = message.id;
    this.emit("message", message);
  }

  /** @internal */
  _recovery(event: RecoveredEvent): void {
    this.emit(event.recovered ? "recovered" : "resync", event);
  }

  /** @internal */
  _error(error: ClarionError): void {
    this.emit("error", error);
  }
}
