import { ChangeDetectionStrategy, Component, inject, signal } from "@angular/core";
import { FormsModule } from "@angular/forms";

import { SessionService } from "./chat/session.service";

@Component({
  selector: "chat-sign-in",
  imports: [FormsModule],
  changeDetection: ChangeDetectionStrategy.OnPush,
  template: `
    <form class="signin" (ngSubmit)="signIn()">
      <h1>Chat</h1>
      <label>User id <input id="user-id" name="userId" [(ngModel)]="userId" required maxlength="64" autocomplete="username"></label>
      <label>Display name <input id="display-name" name="name" [(ngModel)]="name" maxlength="100"></label>
      <label>
        Token <small>(leave empty to use the dev token endpoint, <code>CHAT_DEV=1</code>)</small>
        <textarea id="token" name="token" [(ngModel)]="token" rows="2" placeholder="eyJ… from chat-server token alice"></textarea>
      </label>
      <button id="signin-button" type="submit" [disabled]="busy()">Sign in</button>
      @if (error() ?? session.endedBecause(); as e) { <p class="error" role="alert">{{ e }}</p> }
    </form>
  `,
})
export class SignInComponent {
  readonly session = inject(SessionService);
  userId = "";
  name = "";
  token = "";
  readonly busy = signal(false);
  readonly error = signal<string | null>(null);

  async signIn(): Promise<void> {
    this.error.set(null);
    this.busy.set(true);
    try {
      if (this.token.trim()) this.session.signInWithToken(this.token.trim(), this.name.trim());
      else if (this.userId.trim()) await this.session.signInDev(this.userId.trim(), this.name.trim());
      else this.error.set("Enter a user id, or paste a token.");
    } catch (e) {
      this.error.set(e instanceof Error ? e.message : String(e));
    } finally {
      this.busy.set(false);
    }
  }
}
