import { api, AttentionResponse, promptBody } from "./api";
import { blue, canvas, el, latestOnly, pct, query, setQuery, show } from "./dom";
import type { PageContext } from "./main";
import { defaultPrompt, promptForm } from "./prompt";

export function attentionPage(ctx: PageContext): void {
  const out = el("div", { "aria-live": "polite" });
  // Only the last prompt asked for is drawn (as on the Prompt page): an earlier answer arriving later is dropped.
  const request = latestOnly();
  const load = (text: string) => {
    const draw = request();
    out.replaceChildren(el("p", { class: "muted" }, "Running…"));
    api<AttentionResponse>("/api/attention", promptBody(text, ctx.model))
      .then(r => draw(() => { out.replaceChildren(); showAttention(out, r); }))
      .catch(e => draw(() => out.replaceChildren(el("p", { class: "error", role: "alert" }, String(e.message ?? e)))));
  };
  ctx.root.append(el("h1", {}, "Attention"), promptForm(ctx, load), out);
  load(query().get("text") ?? defaultPrompt);
}

function parseHead(r: AttentionResponse): [number, number] {
  const m = (query().get("head") ?? "").match(/^L(\d+)H(\d+)$/);
  if (m && +m[1] < r.layers && +m[2] < r.heads) return [+m[1], +m[2]];
  return [0, 0];
}

function showAttention(out: HTMLElement, r: AttentionResponse): void {
  const detail = el("div", { class: "panel", "data-testid": "head-detail" });
  const grid = el("div", { class: "heads", role: "group", "aria-label": "attention heads; arrow keys move" });
  grid.style.gridTemplateColumns = `40px repeat(${r.heads}, auto)`;
  const cells: HTMLButtonElement[][] = [];
  grid.append(el("span", {}), ...Array.from({ length: r.heads }, (_, h) => el("span", { class: "label" }, `H${h}`)));
  for (let l = 0; l < r.layers; l++) {
    grid.append(el("span", { class: "label" }, `L${l}`));
    cells[l] = [];
    for (let h = 0; h < r.heads; h++) {
      const [c, g] = canvas(56, 56, `pattern of L${l}H${h}`);
      drawPattern(g, r.patterns[l][h], 56);
      const b = el("button", { class: "head", "aria-pressed": "false", title: `L${l}H${h}`, "data-testid": `head-L${l}H${h}` }, c);
      b.addEventListener("click", () => select(l, h, true));
      b.addEventListener("keydown", e => {
        const d: Record<string, [number, number]> = { ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0] };
        const step = d[e.key];
        if (!step) return;
        e.preventDefault();
        cells[Math.max(0, Math.min(r.layers - 1, l + step[0]))][Math.max(0, Math.min(r.heads - 1, h + step[1]))].focus();
      });
      cells[l][h] = b;
      grid.append(b);
    }
  }
  const select = (l: number, h: number, remember: boolean) => {
    cells.forEach((row, i) => row.forEach((b, j) => b.setAttribute("aria-pressed", String(i === l && j === h))));
    if (remember) setQuery({ head: `L${l}H${h}` });
    showHead(detail, r, l, h);
  };
  out.append(el("div", { class: "row" },
    el("div", {}, el("h2", {}, "Heads (click one)"), grid),
    el("div", {}, el("h2", {}, "Head"), detail)));
  const [l0, h0] = parseHead(r);
  select(l0, h0, false);
  out.append(el("h2", {}, `Head detection (${r.detection.sequences} repeated-token sequences, halves of ${r.detection.repeat_length})`), detectionTable(r));
}

function drawPattern(g: CanvasRenderingContext2D, pattern: number[][], size: number): void {
  const T = pattern.length, cell = size / T;
  g.fillStyle = "#fff";
  g.fillRect(0, 0, size, size);
  for (let q = 0; q < T; q++)
    for (let k = 0; k <= q; k++) {
      g.fillStyle = blue(pattern[q][k]);
      g.fillRect(k * cell, q * cell, Math.ceil(cell), Math.ceil(cell));
    }
}

function showHead(detail: HTMLElement, r: AttentionResponse, l: number, h: number): void {
  const pattern = r.patterns[l][h], T = r.tokens.length;
  const keys = r.tokens.map((t, k) => el("span", { class: "token", "data-testid": "key-token", title: `key ${k}` }, show(t.text)));
  const status = el("div", { class: "status", "data-testid": "attends" }, "hover or focus a query token");
  const paint = (q: number | null) => keys.forEach((k, i) => {
    queries[i]?.setAttribute("aria-pressed", String(q === i));
    const w = q === null ? 0 : pattern[q][i] ?? 0;
    k.style.backgroundColor = blue(w);
    k.style.color = w > 0.55 ? "#fff" : "";
  });
  const queries = r.tokens.map((t, q) => {
    const b = el("button", { class: "token", "aria-pressed": "false", "data-testid": "query-token", title: `query ${q}` }, show(t.text));
    const on = () => {
      paint(q);
      const best = pattern[q].reduce((bi, v, i) => v > pattern[q][bi] ? i : bi, 0);
      status.textContent = `${show(t.text)} (${q}) attends most to ${show(r.tokens[best].text)} (${best}) with ${pct(pattern[q][best])}`;
    };
    b.addEventListener("mouseenter", on);
    b.addEventListener("focus", on);
    return b;
  });
  // The full pattern with token labels: queries down the left, keys along the top.
  const size = Math.min(420, Math.max(160, T * 24)), margin = 70;
  const [c, g] = canvas(size + margin + 32, size + margin, `attention pattern of L${l}H${h}, queries by keys`);
  g.font = "11px ui-monospace, monospace";
  g.fillStyle = "#334";
  g.textBaseline = "middle";
  g.textAlign = "right";
  const cell = size / T;
  r.tokens.forEach((t, i) => {
    const label = show(t.text).slice(0, 9);
    g.fillText(label, margin - 4, margin + (i + 0.5) * cell);
    g.save();
    g.translate(margin + (i + 0.5) * cell, margin - 4);
    g.rotate(-Math.PI / 3);
    g.textAlign = "left";
    g.fillText(label, 0, 0);
    g.restore();
  });
  g.translate(margin, margin);
  drawPattern(g, pattern, size);
  detail.replaceChildren(
    el("div", { "data-testid": "head-title" }, el("b", {}, `L${l}H${h}`), el("span", { class: "muted" }, "  rows: queries, columns: keys")),
    el("div", { class: "muted" }, "Queries (hover):"), el("div", { class: "tokens" }, ...queries),
    el("div", { class: "muted" }, "Keys (shade = attention from the hovered query):"), el("div", { class: "tokens" }, ...keys),
    status, c);
  paint(T - 1);
}

function detectionTable(r: AttentionResponse): HTMLElement {
  const d = r.detection, rows: { l: number; h: number; s: number[] }[] = [];
  for (let l = 0; l < r.layers; l++) for (let h = 0; h < r.heads; h++) rows.push({ l, h, s: d.scores.map(k => k[l][h]) });
  // Sorted by one score (a column header button chooses which; induction first), largest first.
  let sortBy = Math.max(0, d.kinds.indexOf("induction"));
  const body = el("tbody", {});
  const headers = d.kinds.map(k => el("th", {}, el("button", { class: "sort", "aria-label": `sort by ${k.replace("_", " ")} score` }, k.replace("_", " "))));
  const render = () => {
    rows.sort((a, b) => b.s[sortBy] - a.s[sortBy]);
    headers.forEach((th, i) => th.setAttribute("aria-sort", i === sortBy ? "descending" : "none"));
    body.replaceChildren(...rows.slice(0, 200).map(row => el("tr", {}, el("td", {}, `L${row.l}H${row.h}`), ...row.s.map(v => el("td", {}, v.toFixed(3))))));
  };
  headers.forEach((th, i) => th.querySelector("button")!.addEventListener("click", () => { sortBy = i; render(); }));
  render();
  return el("table", { "data-testid": "detection" }, el("thead", {}, el("tr", {}, el("th", {}, "head"), ...headers)), body);
}
