import { ApiError } from "./api";
import { el } from "./dom";

// Long work as a server job: start it, show its progress streamed as server-sent events (/api/jobs/{id}/events) with a
// progress bar, and cancel it (DELETE /api/jobs/{id}). Used by the Circuits page's sweep form and the Features page's
// store builder.

export interface JobKindView { available: boolean; reason: string | null }
export interface TextArtifact { id: string; name: string; kind: string; bytes: number }
export interface JobKinds { patching_sweep: JobKindView; feature_store: JobKindView; targets: string[]; texts: TextArtifact[] }
interface JobEvent<T> { type: string; done: number; total: number; message: string | null; data: T | null }

/** A progress bar, a status line and a Cancel button for one job at a time. */
export class JobRunner<T> {
  readonly element: HTMLElement;
  private readonly bar = el("progress", { max: "1", value: "0", "data-testid": "job-progress", "aria-label": "job progress" });
  private readonly status = el("span", { class: "status", "data-testid": "job-status", "aria-live": "polite" });
  private readonly cancel = el("button", { type: "button", "data-testid": "job-cancel", disabled: true }, "Cancel");
  private stream: EventSource | null = null;
  private id: string | null = null;

  constructor(private readonly onResult: (result: T) => void, private readonly onIdle: () => void = () => undefined) {
    this.element = el("div", { class: "job-runner", hidden: true }, this.bar, this.status, this.cancel);
    this.cancel.addEventListener("click", () => {
      if (!this.id) return;
      this.status.textContent = "cancelling…";
      fetch(`/api/jobs/${this.id}`, { method: "DELETE" }).catch(() => undefined);
    });
  }

  get running(): boolean { return this.stream !== null; }

  async start(kind: string, body: unknown): Promise<void> {
    this.element.hidden = false;
    this.bar.removeAttribute("value"); // indeterminate until the first progress
    this.status.textContent = "starting…";
    delete this.element.dataset.state;
    const response = await fetch(`/api/jobs/${kind}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const json = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) { this.end("failed", `error: ${json.error ?? response.status}`); throw new ApiError(json.error); }
    this.id = json.id as string;
    this.cancel.disabled = false;
    this.stream = new EventSource(`/api/jobs/${this.id}/events`);
    const parse = (ev: Event) => JSON.parse((ev as MessageEvent).data) as JobEvent<T>;
    this.stream.addEventListener("progress", ev => {
      const e = parse(ev);
      this.bar.max = Math.max(1, e.total);
      this.bar.value = e.done;
      this.status.textContent = `${e.message ?? ""} (${e.done.toLocaleString()} / ${e.total.toLocaleString()})`;
    });
    this.stream.addEventListener("result", ev => {
      const e = parse(ev);
      this.bar.max = 1; this.bar.value = 1;
      this.end("done", "done");
      this.onResult(e.data as T);
    });
    this.stream.addEventListener("error", ev => {
      // A server-sent "error" event carries data; a dropped connection does not.
      const data = (ev as MessageEvent).data;
      this.end("failed", data ? `error: ${JSON.parse(data).message}` : "the connection to the server was lost");
    });
    this.stream.addEventListener("cancelled", () => this.end("cancelled", "cancelled: nothing was written"));
  }

  /** Shows an error found before any job was started (a form value the server would refuse). */
  fail(message: string): void {
    this.end("failed", `error: ${message}`);
  }

  private end(state: string, message: string): void {
    this.stream?.close();
    this.stream = null;
    this.id = null;
    this.cancel.disabled = true;
    this.status.textContent = message;
    this.element.dataset.state = state;
    this.onIdle();
  }
}
