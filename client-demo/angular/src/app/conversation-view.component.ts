import {
  ChangeDetectionStrategy, Component, ElementRef, computed, effect, inject, signal, viewChild,
} from "@angular/core";
import { DatePipe } from "@angular/common";
import { FormsModule } from "@angular/forms";

import { ChatStore, type ViewMessage } from "./chat/chat.store";
import { MembersPanelComponent } from "./members-panel.component";

const TICKS: Record<ViewMessage["status"], string> = {
  pending: "🕓", failed: "⚠", sent: "✓", delivered: "✓✓", read: "✓✓",
};

@Component({
  selector: "chat-conversation-view",
  imports: [FormsModule, MembersPanelComponent, DatePipe],
  changeDetection: ChangeDetectionStrategy.OnPush,
  template: `
    @if (store.selected(); as c) {
      <section class="conversation-view" [attr.data-key]="c.key">
        <header class="thread-header">
          <button type="button" class="back" (click)="store.selectedKey.set(null)" aria-label="back">‹</button>
          @if (c.kind === "direct") {
            <span class="dot" id="peer-dot" [class.online]="store.presence().get(c.id)"></span>
          }
          <span class="title" id="thread-title">{{ c.name }}</span>
          @if (c.kind === "group") {
            <button type="button" class="link" id="members-toggle" (click)="membersOpen.set(!membersOpen())">
              {{ c.memberCount ?? "" }} members
            </button>
          }
        </header>
        <div class="thread-and-panel">
          <div class="thread" id="thread" #thread>
            @if (store.thread(); as t) {
              @if (!t.exhausted && t.loaded) {
                <button type="button" class="link load-older" id="load-older" (click)="loadOlder()" [disabled]="t.loading">Load older</button>
              }
              @for (m of t.messages; track m.key) {
                <div class="message" [class.mine]="m.senderId === me" [attr.data-status]="m.status" [attr.data-id]="m.id">
                  @if (c.kind === "group" && m.senderId !== me) {
                    <span class="sender">{{ store.nameOf(m.senderId) }}</span>
                  }
                  <span class="text">{{ m.text }}</span>
                  <span class="meta">
                    <time [attr.datetime]="m.timestamp">{{ m.timestamp | date: "HH:mm" }}</time>
                    @if (m.senderId === me) {
                      <span class="ticks" [class]="'ticks ' + m.status" [attr.title]="m.status">{{ ticks[m.status] }}</span>
                    }
                  </span>
                  @if (m.senderId === me && c.kind === "group" && m.id && store.receipts().get(m.id); as r) {
                    <span class="read-by" [attr.data-read]="r.readCount" [attr.data-of]="r.recipientCount">
                      read by {{ r.readCount }} of {{ r.recipientCount }}
                    </span>
                  }
                  @if (m.status === "failed") {
                    <button type="button" class="link retry" (click)="store.retry(m)" [attr.title]="m.error">Not sent: retry</button>
                  }
                </div>
              }
            }
          </div>
          @if (c.kind === "group" && membersOpen()) {
            <chat-members-panel />
          }
        </div>
        <div class="typing" id="typing" [hidden]="!typingText()">{{ typingText() }}</div>
        @if (c.left) {
          <p class="left-note" id="left-note">You are no longer a member of this group.</p>
        } @else {
          <form class="composer" (ngSubmit)="send()">
            <input id="message-input" name="text" [(ngModel)]="text" (input)="store.typed()"
                   maxlength="4000" autocomplete="off" placeholder="Message">
            <button type="submit" id="send">Send</button>
          </form>
        }
      </section>
    } @else {
      <section class="conversation-view empty"><p>Pick a conversation, or start one.</p></section>
    }
  `,
})
export class ConversationViewComponent {
  readonly store = inject(ChatStore);
  readonly me = this.store.me;
  readonly ticks = TICKS;
  readonly membersOpen = signal(false);
  text = "";
  private readonly threadEl = viewChild<ElementRef<HTMLElement>>("thread");
  private keepScroll = false;

  readonly typingText = computed(() => {
    const users = this.store.typing();
    if (!users.length) return "";
    const c = this.store.selected();
    if (c?.kind === "direct") return `${c.name} is typing…`;
    return `${users.map((u) => this.store.nameOf(u)).join(", ")} ${users.length > 1 ? "are" : "is"} typing…`;
  });

  constructor() {
    // New messages scroll the thread to the bottom; older pages keep the reader where they were.
    effect(() => {
      this.store.thread();
      const el = this.threadEl()?.nativeElement;
      if (!el) return;
      const fromBottom = el.scrollHeight - el.scrollTop;
      queueMicrotask(() => {
        if (this.keepScroll) el.scrollTop = el.scrollHeight - fromBottom;
        else el.scrollTop = el.scrollHeight;
        this.keepScroll = false;
      });
    });
  }

  send(): void {
    const text = this.text;
    if (!text.trim()) return;
    this.text = "";
    this.store.send(text);
  }

  async loadOlder(): Promise<void> {
    this.keepScroll = true;
    await this.store.loadOlder();
  }
}
