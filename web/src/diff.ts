import { api, ApiError } from "./api";
import { canvas, el, pagerButton, query, rowKeys, setQuery } from "./dom";
import type { PageContext } from "./main";
import { showModelDiff, type ModelDiffView } from "./modeldiff";

// Model diffing, two kinds on one page: `loupe diff` runs (`loupe serve --diff DIR`, see modeldiff.ts) and crosscoders
// (`loupe serve --crosscoder DIR`): latents by class (the first model's own, shared, the
// second's own, …), the histogram of Δ (Minder et al.'s relative norm difference) with the class thresholds, and a
// paged table of latents with each model's decoder norm. A latent opens its dashboard on the Features page when a
// feature store of the crosscoder's latents is served (`loupe crosscoder features`, then --features).
// State in the URL: ?cc=ID&class=NAME&order=norm_diff&desc=1&offset=0, or ?run=ID for a `loupe diff` run.

interface Histogram { lo: number; hi: number; counts: number[] }
interface CrosscoderView { id: string; name: string; architecture: string; sources: string[]; hooks: string[]; d_sae: number; counts: Record<string, number>; store: string | null }
interface Thresholds { only_second_above: number; only_first_below: number; shared_from: number; shared_to: number }
interface SummaryView { crosscoder: CrosscoderView; thresholds: Thresholds; norm_diff_histogram: Histogram | null; relative_norm_histogram: Histogram | null; shared_cosine_histogram: Histogram | null; classes: string[] }
interface LatentView { index: number; norms: number[]; relative_norm: number | null; norm_diff: number | null; cosine: number | null; peak_source: number; peak_share: number; class: string }
interface LatentPage { total: number; offset: number; order: string; descending: boolean; class: string | null; rows: LatentView[] }

const PAGE = 100;

export function diffPage(ctx: PageContext): void {
  const root = ctx.root;
  root.append(el("h1", {}, "Model diff"));
  const body = el("div", {});
  root.append(body);
  Promise.all([api<CrosscoderView[]>("/api/crosscoders"), api<ModelDiffView[]>("/api/diffs")]).then(([all, runs]) => {
    if (all.length === 0 && runs.length === 0) {
      body.append(el("p", { class: "placeholder", "data-testid": "no-crosscoders" },
        "No model diffs or crosscoders are served. Start the server with --diff DIR (a folder `loupe diff --out` wrote), or --crosscoder DIR (a crosscoder `loupe crosscoder train` wrote, or dictionary_learning's or Kissane's files) and --features DIR/features.db for its latents' dashboards."));
      return;
    }
    const run = runs.find(r => r.id === query().get("run"));
    const cc = all.find(c => c.id === query().get("cc"));
    const open = (value: string) => {
      body.replaceChildren();
      const [kind, id] = [value.slice(0, value.indexOf(":")), value.slice(value.indexOf(":") + 1)];
      const picker = choices(all, runs, value, next => {
        setQuery(next.startsWith("run:") ? { run: next.slice(4), cc: null, class: null, offset: null, order: null, desc: null, hook: null }
          : { cc: next.slice(3), run: null, hook: null, class: null, offset: null }, true);
        open(next);
      });
      if (kind === "run") showModelDiff(body, picker, runs.find(r => r.id === id)!);
      else showCrosscoder(body, picker, all.find(c => c.id === id)!);
    };
    open(run ? `run:${run.id}` : cc ? `cc:${cc.id}` : runs.length > 0 ? `run:${runs[0].id}` : `cc:${all[0].id}`);
  }, e => body.append(el("p", { class: "error", role: "alert" }, String(e.message ?? e))));
}

/** One picker over both kinds: `run:ID` for a `loupe diff` run, `cc:ID` for a crosscoder. */
function choices(all: CrosscoderView[], runs: ModelDiffView[], value: string, change: (value: string) => void): HTMLSelectElement {
  const group = (label: string, options: HTMLOptionElement[]) => options.length === 0 ? null : el("optgroup", { label }, ...options);
  const picker = el("select", { "aria-label": "Model diff or crosscoder", "data-testid": "crosscoder" },
    group("Model diffs (loupe diff)", runs.map(r => el("option", { value: `run:${r.id}`, selected: value === `run:${r.id}` }, `${r.name} · ${r.model_b} vs ${r.model_a}`))),
    group("Crosscoders", all.map(c => el("option", { value: `cc:${c.id}`, selected: value === `cc:${c.id}` }, `${c.name} · ${c.sources.join(" vs ")} · ${c.d_sae.toLocaleString()} latents`))));
  picker.addEventListener("change", () => change(picker.value));
  return picker;
}

function showCrosscoder(body: HTMLElement, picker: HTMLElement, cc: CrosscoderView): void {
  const hooks = [...new Set(cc.hooks)].join(", ");
  const info = el("span", { class: "muted" }, `${cc.architecture} · ${hooks}${cc.store ? "" : " · no feature store of its latents is served"}`);
  const summary = el("div", { class: "panel" }, el("p", { class: "muted" }, "Loading…"));
  const list = el("div", { class: "panel" });
  body.append(el("div", { class: "row" }, picker, info), summary, list);
  api<SummaryView>(`/api/crosscoders/${cc.id}`).then(s => {
    const reload = () => { drawChips(summary, s, reload); loadLatents(list, s); };
    drawChips(summary, s, reload);
    if (s.norm_diff_histogram) summary.append(histogramView(s.norm_diff_histogram, s.thresholds, s.crosscoder.sources));
    loadLatents(list, s);
  }, e => summary.replaceChildren(el("p", { class: "error", role: "alert" }, String(e.message ?? e))));
}

/** One button per class with its count; the chosen class filters the table (again: all). */
function drawChips(summary: HTMLElement, s: SummaryView, reload: () => void): void {
  const current = query().get("class");
  const chip = (name: string | null, label: string, count: number) => {
    const b = el("button", { class: "chip", "data-testid": "class-chip", "data-class": name ?? "", "aria-pressed": String(current === name) }, `${label} ${count.toLocaleString()}`);
    b.addEventListener("click", () => { setQuery({ class: name, offset: null }, true); reload(); });
    return b;
  };
  const total = Object.values(s.crosscoder.counts).reduce((a, b) => a + b, 0);
  const chips = el("div", { class: "row", role: "group", "aria-label": "Latent classes", "data-testid": "classes" },
    chip(null, "all", total), ...s.classes.map(c => chip(c, c, s.crosscoder.counts[c] ?? 0)));
  const old = summary.querySelector("[data-testid=classes]");
  if (old) old.replaceWith(chips);
  else summary.replaceChildren(chips);
}

/** Δ over [0, 1] as bars, the class thresholds as lines; hover or focus a bar for its range and count. */
function histogramView(h: Histogram, t: Thresholds, sources: string[]): HTMLElement {
  const width = 640, height = 160, pad = 24;
  const [c, g] = canvas(width, height, `Histogram of Δ: ${sources[0]} only at 0, shared at ½, ${sources[1]} only at 1`);
  c.setAttribute("data-testid", "delta-histogram");
  c.tabIndex = 0;
  const status = el("p", { class: "muted", "data-testid": "histogram-status", "aria-live": "polite" }, "Hover a bar for its latents.");
  const max = Math.max(1, ...h.counts);
  const bins = h.counts.length, bw = (width - 2 * pad) / bins;
  const x = (v: number) => pad + (v - h.lo) / (h.hi - h.lo) * (width - 2 * pad);
  const draw = (hover: number) => {
    g.clearRect(0, 0, width, height);
    h.counts.forEach((n, i) => {
      const bh = n === 0 ? 0 : Math.max(1, (height - 2 * pad) * Math.log1p(n) / Math.log1p(max));
      g.fillStyle = i === hover ? "#c0392b" : "#1e50b4";
      g.fillRect(pad + i * bw + 0.5, height - pad - bh, Math.max(1, bw - 1), bh);
    });
    g.strokeStyle = "#888";
    g.setLineDash([3, 3]);
    for (const v of [t.only_first_below, t.shared_from, t.shared_to, t.only_second_above]) { g.beginPath(); g.moveTo(x(v), pad / 2); g.lineTo(x(v), height - pad); g.stroke(); }
    g.setLineDash([]);
    g.fillStyle = "#333";
    g.font = "11px sans-serif";
    g.fillText(`${sources[0]} only`, pad, height - 6);
    g.fillText("shared", x(0.5) - 16, height - 6);
    g.fillText(`${sources[1]} only`, width - pad - 60, height - 6);
  };
  let at = -1;
  const show = (i: number) => {
    at = Math.max(0, Math.min(bins - 1, i));
    draw(at);
    const lo = h.lo + at * (h.hi - h.lo) / bins, hi = lo + (h.hi - h.lo) / bins;
    status.textContent = `Δ ${lo.toFixed(2)}–${hi.toFixed(2)}: ${h.counts[at].toLocaleString()} latents (log-scaled bars)`;
  };
  c.addEventListener("mousemove", e => show(Math.floor((e.offsetX - pad) / bw)));
  c.addEventListener("keydown", e => {
    if (e.key === "ArrowRight") { e.preventDefault(); show(at + 1); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); show(at < 0 ? 0 : at - 1); }
  });
  draw(-1);
  return el("figure", {}, c, el("figcaption", { class: "muted" }, "Δ = ½((n_B − n_A) / max(n_A, n_B) + 1) of each latent's decoder norms; dashed: the class thresholds"), status);
}

function loadLatents(list: HTMLElement, s: SummaryView): void {
  const cc = s.crosscoder;
  const order = query().get("order") ?? "norm_diff";
  const desc = (query().get("desc") ?? (order === "index" ? "0" : "1")) === "1";
  const offset = Math.max(0, Number(query().get("offset") ?? 0) || 0);
  const cls = query().get("class");
  list.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  const url = `/api/crosscoders/${cc.id}/latents?order=${order}&desc=${desc}&offset=${offset}&limit=${PAGE}${cls ? `&class=${encodeURIComponent(cls)}` : ""}`;
  api<LatentPage>(url).then(page => {
    const sort = (key: string, label: string) => {
      const b = el("button", { class: "sort", "data-testid": `sort-${key}` }, label);
      b.addEventListener("click", () => {
        setQuery({ order: key, desc: order === key ? (desc ? "0" : "1") : (key === "index" ? "0" : "1"), offset: null }, true);
        loadLatents(list, s);
      });
      return el("th", { "aria-sort": order === key ? (desc ? "descending" : "ascending") : undefined }, b);
    };
    const num = (v: number | null, digits = 3) => v === null ? "–" : v.toFixed(digits);
    const rows = page.rows.map(r => {
      const tr = el("tr", { tabindex: "0", "data-testid": "latent-row", "data-latent": String(r.index), title: cc.store ? "Open its dashboard" : "" },
        el("td", {}, String(r.index)), el("td", {}, r.class),
        ...r.norms.map(n => el("td", {}, n.toFixed(3))),
        el("td", {}, num(r.norm_diff)), el("td", {}, num(r.relative_norm)), el("td", {}, num(r.cosine)));
      const open = () => {
        if (!cc.store) return;
        history.pushState(null, "", `/features?store=${cc.store}&feature=${r.index}`);
        window.dispatchEvent(new PopStateEvent("popstate"));
      };
      tr.addEventListener("click", open);
      rowKeys(tr, open);
      return tr;
    });
    const pager = (delta: number, label: string) => pagerButton(offset, delta, PAGE, page.total, label, to => { setQuery({ offset: String(to) }, true); loadLatents(list, s); });
    list.replaceChildren(
      el("div", { class: "row pager" }, pager(-1, "‹ prev"),
        el("span", { class: "muted", "data-testid": "latent-count" }, page.total === 0 ? "no latents" :
          `${(offset + 1).toLocaleString()}–${Math.min(page.total, offset + PAGE).toLocaleString()} of ${page.total.toLocaleString()}${cls ? ` (${cls})` : ""}`),
        pager(1, "next ›")),
      el("table", { "data-testid": "latent-list" },
        el("thead", {}, el("tr", {}, sort("index", "#"), el("th", {}, "class"), ...cc.sources.map(src => el("th", {}, `‖W_dec‖ ${src}`)),
          sort("norm_diff", "Δ"), sort("relative_norm", "relative norm"), sort("cosine", "cosine"))),
        el("tbody", {}, ...rows)));
  }, e => list.replaceChildren(el("p", { class: "error", role: "alert" }, e instanceof ApiError ? e.message : String(e))));
}
