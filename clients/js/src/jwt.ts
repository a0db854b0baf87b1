/**
 * The `exp` claim of a JWT in milliseconds, read without verifying the token
 * (the server verifies; the client only needs to know when to refresh).
 * Undefined for a token that is not a JWT or has no `exp`.
 */
export function tokenExpiry(token: string): number | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(base64 + "===".slice((base64.length + 3) % 4)))?.exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}
