import { api, LensView, promptBody, PromptResponse } from "./api";
import { blue, canvas, el, latestOnly, pct, query, setQuery, show } from "./dom";
import type { PageContext } from "./main";

export const defaultPrompt = "Once upon a time, there was a little girl named Lily. She";

/** A prompt form whose text lives in the URL (?text=…); submits run `load`. */
export function promptForm(ctx: PageContext, load: (text: string) => void): HTMLFormElement {
  const input = el("input", { name: "text", "aria-label": "Prompt", "data-testid": "prompt-input", value: query().get("text") ?? defaultPrompt, autocomplete: "off" });
  const form = el("form", {}, input, el("button", { type: "submit", "data-testid": "run" }, "Run"));
  form.addEventListener("submit", e => {
    e.preventDefault();
    setQuery({ text: input.value, pos: null, head: null }, true);
    load(input.value);
  });
  if (ctx.model && !ctx.model.has_tokenizer) input.placeholder = "token ids, e.g. 5,17,113";
  return form;
}

export function promptPage(ctx: PageContext): void {
  const out = el("div", { "aria-live": "polite" });
  // Only the last prompt asked for is drawn: the answer to an earlier one (the page's first load, a Run before it) arriving
  // later must not replace it, nor reset what the user has selected since.
  const request = latestOnly();
  const load = (text: string) => {
    const draw = request();
    out.replaceChildren(el("p", { class: "muted" }, "Running…"));
    api<PromptResponse>("/api/prompt", { ...promptBody(text, ctx.model), top_k: 10 })
      .then(r => draw(() => { out.replaceChildren(); showPrompt(out, r); }))
      .catch(e => draw(() => out.replaceChildren(el("p", { class: "error", role: "alert" }, String(e.message ?? e)))));
  };
  ctx.root.append(el("h1", {}, "Prompt"), promptForm(ctx, load), out);
  load(query().get("text") ?? defaultPrompt);
}

function showPrompt(out: HTMLElement, r: PromptResponse): void {
  const last = r.tokens.length - 1;
  const top = r.top_k[last][0];
  out.append(el("p", { class: "answer" }, "Next token: ",
    el("b", { "data-testid": "top-token", "data-token-id": String(top.id) }, show(top.text)), ` ${pct(top.prob)} (id ${top.id})`));

  // Tokens: hover, focus or click one to see the model's top-k next tokens after it.
  const list = el("div", { class: "panel", "data-testid": "topk" });
  const buttons = r.tokens.map((t, i) => el("button", { class: "token", "aria-pressed": "false", title: `position ${i}, id ${t.id}`, "data-testid": "token" }, show(t.text)));
  const select = (i: number, remember: boolean) => {
    buttons.forEach((b, j) => b.setAttribute("aria-pressed", String(i === j)));
    list.replaceChildren(
      el("div", { class: "muted" }, `after position ${i} (${show(r.tokens[i].text)}):`),
      el("table", {}, el("tbody", {}, ...r.top_k[i].map(n => el("tr", {}, el("td", {}, show(n.text)), el("td", {}, pct(n.prob)), el("td", { class: "muted" }, String(n.id)))))));
    if (remember) setQuery({ pos: String(i) });
  };
  buttons.forEach((b, i) => {
    b.addEventListener("mouseenter", () => select(i, false));
    b.addEventListener("focus", () => select(i, false));
    b.addEventListener("click", () => select(i, true));
    b.addEventListener("keydown", e => {
      const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
      if (step) { e.preventDefault(); buttons[Math.max(0, Math.min(last, i + step))].focus(); }
    });
  });
  const pos = Number(query().get("pos") ?? last);
  select(Number.isInteger(pos) && pos >= 0 && pos <= last ? pos : last, false);
  out.append(el("h2", {}, "Tokens"), el("div", { class: "tokens" }, ...buttons),
    el("div", { class: "row" }, list));

  out.append(el("div", { class: "row" },
    el("div", {}, el("h2", {}, "Logit lens: the top token read from the residual stream (shade = its probability)"), lensMap(r, r.lens, "lens")),
    el("div", {}, el("h2", {}, `Direct logit attribution of ${show(r.dla.token.text)} at the last position`), dlaChart(r))));
  // The server's tuned lens (loupe serve --tuned): each stage's residual through its trained translator first.
  if (r.tuned_lens)
    out.append(el("div", { class: "row" },
      el("div", { "data-testid": "tuned-lens" }, el("h2", {}, "Tuned lens: the same stages through each layer's trained translator"), lensMap(r, r.tuned_lens, "tuned-lens"))));
}

function lensMap(r: PromptResponse, lens: LensView, id: string): HTMLElement {
  const stages = lens.stages.length, T = r.tokens.length;
  const left = 150, topPad = 22, cellW = Math.max(34, Math.min(70, Math.floor(900 / T))), cellH = 24;
  const width = left + T * cellW + 2, height = topPad + stages * cellH + 2;
  const [c, g] = canvas(width, height, `${id === "lens" ? "logit lens" : "tuned lens"} heat map, stages by positions`);
  c.tabIndex = 0;
  g.font = "11px ui-monospace, monospace";
  g.textBaseline = "middle";
  for (let p = 0; p < T; p++) {
    g.fillStyle = "#334";
    g.textAlign = "center";
    g.fillText(clip(show(r.tokens[p].text), cellW), left + p * cellW + cellW / 2, topPad / 2);
  }
  // The final stage on top, as the residual stream is usually read (output at the top).
  for (let row = 0; row < stages; row++) {
    const s = stages - 1 - row, y = topPad + row * cellH;
    g.fillStyle = "#334";
    g.textAlign = "right";
    g.fillText(lens.stages[s], left - 6, y + cellH / 2);
    for (let p = 0; p < T; p++) {
      const prob = lens.top_prob[s][p];
      g.fillStyle = blue(prob);
      g.fillRect(left + p * cellW, y, cellW - 1, cellH - 1);
      g.fillStyle = prob > 0.55 ? "#fff" : "#111";
      g.textAlign = "center";
      g.fillText(clip(show(lens.top_text[s][p]), cellW), left + p * cellW + cellW / 2, y + cellH / 2);
    }
  }
  const status = el("div", { class: "status", "data-testid": `${id}-status` }, "hover a cell");
  c.addEventListener("mousemove", e => {
    const rect = c.getBoundingClientRect();
    const p = Math.floor((e.clientX - rect.left - left) / cellW), row = Math.floor((e.clientY - rect.top - topPad) / cellH);
    if (p < 0 || p >= T || row < 0 || row >= stages) return;
    const s = stages - 1 - row;
    status.textContent = `${lens.stages[s]}, position ${p}: top ${show(lens.top_text[s][p])} ${pct(lens.top_prob[s][p])}; ` +
      `final top ${show(lens.top_text[stages - 1][p])} ${pct(lens.final_top_prob[s][p])}`;
  });
  return el("div", {}, c, status);
}

function clip(text: string, width: number): string {
  const max = Math.max(2, Math.floor(width / 7));
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

function dlaChart(r: PromptResponse): HTMLElement {
  const items = [...r.dla.components].sort((a, b) => Math.abs(b.value) - Math.abs(a.value)).slice(0, 20);
  const maxAbs = Math.max(1e-9, ...items.map(i => Math.abs(i.value)));
  const label = 80, half = 150, rowH = 18, width = label + 2 * half + 60, height = items.length * rowH + 24;
  const [c, g] = canvas(width, height, "direct logit attribution by component");
  const zero = label + half;
  g.font = "11px ui-monospace, monospace";
  g.textBaseline = "middle";
  items.forEach((item, i) => {
    const y = 4 + i * rowH, w = (item.value / maxAbs) * half;
    g.fillStyle = item.value >= 0 ? "#2a6fdb" : "#d0453a";
    g.fillRect(w >= 0 ? zero : zero + w, y + 2, Math.abs(w), rowH - 5);
    g.fillStyle = "#223";
    g.textAlign = "right";
    g.fillText(item.name, label - 6, y + rowH / 2);
    g.textAlign = item.value >= 0 ? "left" : "right";
    g.fillText(item.value.toFixed(2), item.value >= 0 ? zero + w + 4 : zero + w - 4, y + rowH / 2);
  });
  g.strokeStyle = "#889";
  g.beginPath(); g.moveTo(zero + 0.5, 0); g.lineTo(zero + 0.5, height - 20); g.stroke();
  const total = r.dla.components.reduce((s, x) => s + x.value, 0);
  return el("div", {}, c, el("div", { class: "muted" },
    `logit ${r.dla.logit.toFixed(3)} = Σ components ${total.toFixed(3)} + norm bias ${r.dla.norm_bias.toFixed(3)} + unembed bias ${r.dla.unembed_bias.toFixed(3)}; the 20 largest shown`));
}
