import { Injectable, computed, signal } from "@angular/core";
import { userIdOf } from "@chat-server/client";

export interface Session {
  userId: string;
  name: string;
  token: string;
  /** Signed in through the dev token endpoint, so a fresh token can be asked for. */
  dev: boolean;
}

const STORAGE_KEY = "chat-app.session";
/** Ask for a new dev token when the current one has less than this left. */
const RENEW_BEFORE_S = 60;

/**
 * Who is signed in, and where tokens come from: the server's dev endpoint
 * (`POST /api/dev/token`, dev mode only) or a token pasted by the person.
 * Kept per tab in sessionStorage, so two tabs can be two people.
 */
@Injectable({ providedIn: "root" })
export class SessionService {
  private readonly current = signal<Session | null>(load());
  readonly session = this.current.asReadonly();
  readonly signedIn = computed(() => this.current() !== null);
  /** Why the last session ended, when the server ended it (a refused token, say). */
  readonly endedBecause = signal<string | null>(null);

  /** Sign in as anyone through the dev endpoint (the server must run with CHAT_DEV=1). */
  async signInDev(userId: string, name: string): Promise<void> {
    const token = await devToken(userId, name);
    this.set({ userId: userIdOf(token) ?? userId, name: name || userId, token, dev: true });
  }

  /** Sign in with a token issued elsewhere (`chat-server token alice`, your identity provider). */
  signInWithToken(token: string, name: string): void {
    const userId = userIdOf(token);
    if (!userId) throw new Error("that is not a JWT with an id or sub claim");
    this.set({ userId, name: name || userId, token, dev: false });
  }

  signOut(reason: string | null = null): void {
    sessionStorage.removeItem(STORAGE_KEY);
    this.endedBecause.set(reason);
    this.current.set(null);
  }

  /** What ChatClient asks for before every connect: a dev token is renewed when about to expire. */
  async token(): Promise<string> {
    const s = this.current();
    if (!s) throw new Error("not signed in");
    if (s.dev && secondsLeft(s.token) < RENEW_BEFORE_S) {
      this.set({ ...s, token: await devToken(s.userId, s.name) });
    }
    return this.current()!.token;
  }

  private set(session: Session): void {
    this.endedBecause.set(null);
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
    this.current.set(session);
  }
}

async function devToken(userId: string, name: string): Promise<string> {
  const res = await fetch("/api/dev/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ userId, name: name || undefined }),
  });
  const body = (await res.json().catch(() => ({}))) as { token?: string; error?: { message?: string } };
  if (!res.ok || !body.token) {
    throw new Error(body.error?.message ?? `sign-in failed (HTTP ${res.status}); is the server in dev mode?`);
  }
  return body.token;
}

function secondsLeft(token: string): number {
  try {
    const claims = JSON.parse(atob(token.split(".")[1]!.replace(/-/g, "+").replace(/_/g, "/"))) as { exp?: number };
    return (claims.exp ?? 0) - Date.now() / 1000;
  } catch {
    return 0;
  }
}

function load(): Session | null {
  try {
    const raw = sessionStorage.getItem(STORAGE_KEY);
    return raw ? (JSON.parse(raw) as Session) : null;
  } catch {
    return null;
  }
}
