import { api } from "./api";
import { canvas, el, rowKeys, setQuery, show } from "./dom";

// A `loupe diff` run on the Diff page (`loupe serve --diff DIR`): where the fine-tune's next-token distribution leaves
// the base model's (KL by position and its histogram), the positions where it leaves it most, read in their context, and
// the mean activation differences per hook (the Activation Difference Lens) with the tokens they promote.
// State in the URL: ?run=ID&hook=NAME.

export interface ModelDiffView { id: string; name: string; model_a: string; model_b: string; source_a: string; source_b: string; contexts: number; context_size: number; mean_kl: number; hooks: string[] }
interface DivergentPosition { context: number; position: number; kl: number; token: number; top_a: number; top_b: number; prob_a_of_top_b: number; prob_b_of_top_b: number; before: number[]; next: number }
interface DiffToken { token: number; logit: number }
interface ActivationDifference { hook: string; position: number; norm: number; base_norm: number; relative: number | string; promoted_a: DiffToken[]; suppressed_a: DiffToken[]; promoted_b: DiffToken[]; suppressed_b: DiffToken[] }
interface Result { mean_kl_by_position: number[]; kl_histogram_edges: number[]; kl_histogram_counts: number[]; top_positions: DivergentPosition[]; differences: ActivationDifference[] }
interface Detail { diff: ModelDiffView; result: Result; token_strings: Record<string, string> }

export function showModelDiff(body: HTMLElement, picker: HTMLElement, d: ModelDiffView): void {
  const info = el("span", { class: "muted", "data-testid": "diff-info" },
    `${d.model_b} vs ${d.model_a} · ${d.contexts.toLocaleString()} contexts × ${d.context_size} tokens · mean KL(p_${d.model_b} ‖ p_${d.model_a}) ${d.mean_kl.toPrecision(4)} nats`);
  const out = el("div", {}, el("p", { class: "muted" }, "Loading…"));
  body.append(el("div", { class: "row" }, picker, info), out);
  api<Detail>(`/api/diffs/${d.id}`).then(x => render(out, x),
    e => out.replaceChildren(el("p", { class: "error", role: "alert" }, String(e.message ?? e))));
}

function render(out: HTMLElement, x: Detail): void {
  const r = x.result, d = x.diff;
  const tok = (id: number) => x.token_strings[String(id)] ?? `#${id}`;
  const edges = r.kl_histogram_edges;
  out.replaceChildren(
    el("div", { class: "panel" }, el("h2", {}, "Where the predictions differ"),
      bars(r.mean_kl_by_position, false, "kl-by-position", `Mean KL by position, 0 to ${r.mean_kl_by_position.length - 1}`,
        i => `position ${i}: mean KL ${r.mean_kl_by_position[i].toPrecision(4)} nats`),
      bars(r.kl_histogram_counts, true, "kl-histogram", "Histogram of KL over every position (log-scaled bars)",
        i => `KL ${edges[i].toPrecision(3)}–${edges[i + 1].toPrecision(3)}: ${r.kl_histogram_counts[i].toLocaleString()} positions`)),
    el("div", { class: "panel" }, el("h2", {}, "The most divergent positions"), divergent(r.top_positions, d, tok)),
    el("div", { class: "panel" }, el("h2", {}, "Activation differences (h_" + d.model_b + " − h_" + d.model_a + ")"), differences(r.differences, d, tok)));
}

/** Bars of `values` (log-scaled when asked); hover, or focus and ←/→, reads a bar through `describe`. */
function bars(values: number[], log: boolean, testId: string, label: string, describe: (i: number) => string): HTMLElement {
  const width = 640, height = 120, pad = 8;
  const [c, g] = canvas(width, height, label);
  c.setAttribute("data-testid", testId);
  c.tabIndex = 0;
  const status = el("p", { class: "muted", "data-testid": `${testId}-status`, "aria-live": "polite" }, `${label}: hover a bar.`);
  const n = Math.max(1, values.length), bw = (width - 2 * pad) / n;
  const scale = (v: number) => log ? Math.log1p(v) : v;
  const max = Math.max(1e-12, ...values.map(scale));
  let at = -1;
  const draw = () => {
    g.clearRect(0, 0, width, height);
    values.forEach((v, i) => {
      const bh = v <= 0 ? 0 : Math.max(1, (height - 2 * pad) * scale(v) / max);
      g.fillStyle = i === at ? "#c0392b" : "#1e50b4";
      g.fillRect(pad + i * bw + 0.25, height - pad - bh, Math.max(1, bw - 0.5), bh);
    });
  };
  const pick = (i: number) => { at = Math.max(0, Math.min(n - 1, i)); draw(); status.textContent = describe(at); };
  c.addEventListener("mousemove", e => pick(Math.floor((e.offsetX - pad) / bw)));
  c.addEventListener("keydown", e => {
    if (e.key === "ArrowRight") { e.preventDefault(); pick(at + 1); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); pick(at < 0 ? 0 : at - 1); }
  });
  draw();
  return el("figure", {}, c, el("figcaption", { class: "muted" }, label), status);
}

function divergent(rows: DivergentPosition[], d: ModelDiffView, tok: (id: number) => string): HTMLElement {
  if (rows.length === 0) return el("p", { class: "muted" }, "None recorded (loupe diff --top 0).");
  const text = (p: DivergentPosition) => {
    const before = p.before.slice(0, -1).map(t => tok(t)).join("");
    return el("span", { class: "context-text" }, p.before.length > 1 && p.before.length < p.position + 1 ? "…" : "", before,
      el("mark", { title: `token ${p.token}` }, tok(p.token)),
      p.next >= 0 ? el("span", { class: "muted", title: "the next token in the context" }, ` → ${show(tok(p.next))}`) : "");
  };
  return el("table", { "data-testid": "divergent-list" },
    el("thead", {}, el("tr", {}, el("th", {}, "KL"), el("th", {}, "context:pos"), el("th", {}, "text (the position marked)"),
      el("th", {}, `${d.model_a} predicts`), el("th", {}, `${d.model_b} predicts`), el("th", {}, `p(${d.model_b}'s top): ${d.model_a} → ${d.model_b}`))),
    el("tbody", {}, ...rows.map(p => el("tr", { "data-testid": "divergent-row" },
      el("td", {}, p.kl.toPrecision(3)), el("td", {}, `${p.context}:${p.position}`), el("td", {}, text(p)),
      el("td", {}, show(tok(p.top_a))), el("td", {}, show(tok(p.top_b))),
      el("td", {}, `${p.prob_a_of_top_b.toPrecision(2)} → ${p.prob_b_of_top_b.toPrecision(2)}`)))));
}

function differences(all: ActivationDifference[], d: ModelDiffView, tok: (id: number) => string): HTMLElement {
  const hooks = [...new Set(all.map(a => a.hook))];
  if (hooks.length === 0) return el("p", { class: "muted" }, "No hooks were compared.");
  const detail = el("div", { "data-testid": "hook-detail" });
  const list = (ts: DiffToken[]) => ts.slice(0, 6).map(t => show(tok(t.token))).join("  ") || "–";
  const rel = (a: ActivationDifference) => typeof a.relative === "number" ? `${(a.relative * 100).toFixed(1)}%` : "–";
  const open = (hook: string) => {
    setQuery({ hook });
    for (const tr of body.querySelectorAll("tr")) tr.setAttribute("aria-selected", String(tr.getAttribute("data-hook") === hook));
    const rows = all.filter(a => a.hook === hook).sort((a, b) => (a.position < 0 ? 1e9 : a.position) - (b.position < 0 ? 1e9 : b.position));
    detail.replaceChildren(el("h3", {}, hook),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "position"), el("th", {}, "‖δ‖"), el("th", {}, `of ‖h_${d.model_a}‖`),
        el("th", {}, `promotes via ${d.model_a}`), el("th", {}, `promotes via ${d.model_b}`), el("th", {}, `suppresses via ${d.model_b}`))),
        el("tbody", {}, ...rows.map(a => el("tr", { "data-testid": "position-row" },
          el("td", {}, a.position < 0 ? "all past 0" : String(a.position)), el("td", {}, a.norm.toPrecision(4)), el("td", {}, rel(a)),
          el("td", {}, list(a.promoted_a)), el("td", {}, list(a.promoted_b)), el("td", {}, list(a.suppressed_b)))))),
      el("p", { class: "muted" }, `Steer with it: loupe steer --vector DIFF/vectors/${hook}.safetensors:all (pos_J for position J); add it to ${d.model_a}, or subtract it from ${d.model_b}.`));
  };
  const body = el("tbody", {}, ...hooks.map(h => {
    const a = all.find(x => x.hook === h && x.position < 0) ?? all.find(x => x.hook === h)!;
    const tr = el("tr", { tabindex: "0", "data-testid": "hook-row", "data-hook": h, title: "Show every position" },
      el("td", {}, h), el("td", {}, a.norm.toPrecision(4)), el("td", {}, rel(a)), el("td", {}, list(a.promoted_b)));
    tr.addEventListener("click", () => open(h));
    rowKeys(tr, () => open(h));
    return tr;
  }));
  const table = el("table", { "data-testid": "hook-list" },
    el("thead", {}, el("tr", {}, el("th", {}, "hook"), el("th", {}, "‖δ_all‖"), el("th", {}, `of ‖h_${d.model_a}‖`), el("th", {}, `promotes via ${d.model_b}`))), body);
  const wanted = new URLSearchParams(location.search).get("hook");
  open(wanted && hooks.includes(wanted) ? wanted : hooks[0]);
  return el("div", {}, table, detail);
}
