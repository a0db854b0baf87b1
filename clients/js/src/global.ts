// The IIFE bundle's entry: window.Clarion is the client class, with the rest of the package on it
// (Clarion.CloseCodes, Clarion.UnauthorizedError, ...).
import * as all from "./index.js";

(globalThis as { Clarion?: unknown }).Clarion = Object.assign(all.Clarion, all);
