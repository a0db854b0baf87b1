export { Clarion } from "./clarion.js";
export { Subscription } from "./subscription.js";
export { CloseCodes, closeAction, type CloseAction, type CloseCodeInfo } from "./close-codes.js";
export { Backoff, type BackoffOptions } from "./backoff.js";
export { ClarionError, UnauthorizedError } from "./errors.js";
export type * from "./types.js";
