import { el } from "./dom";
import { JobKinds, JobRunner } from "./jobs";

// "Evaluate the SAE": the --sae dictionary spliced into the model over a served .txt file or pasted texts, as
// `loupe sae eval` does it (POST /api/jobs/sae-eval); the table shows the numbers the CLI prints.

interface SaeEvalMetrics {
  architecture: string; hook: string; output_hook: string; d_sae: number; contexts: number; context_size: number; positions: number;
  l0: number; l1: number; fvu: number; explained_variance: number; cosine_similarity: number; l2_ratio: number; mse: number;
  ce_loss_clean: number; ce_loss_with_sae: number; ce_loss_zero_ablated: number; loss_recovered: number;
  kl_with_sae: number; kl_zero_ablated: number; dead_features: number; dead_fraction: number; dense_features: number; dense_fraction: number;
  levels?: { width: number; mse: number; fvu: number; explained_variance: number }[];   // a Matryoshka SAE's inner levels
}
interface SaeEvalJobResult { report: string | null; metrics: SaeEvalMetrics; warning?: string | null }

const fmt = (v: number | null | undefined, digits = 4) => v === null || v === undefined || Number.isNaN(v) ? "n/a" : v.toFixed(digits);

function table(r: SaeEvalJobResult): HTMLElement {
  const m = r.metrics;
  const rows: [string, string, string][] = [
    ["L0 (active features / token)", "l0", fmt(m.l0, 2)],
    ["explained variance", "explained_variance", fmt(m.explained_variance)],
    ...(m.levels ?? []).map(l => [`  latents [0, ${l.width}) alone`, `level_${l.width}`, fmt(l.explained_variance)] as [string, string, string]),
    ["FVU", "fvu", fmt(m.fvu)],
    ["cosine similarity", "cosine_similarity", fmt(m.cosine_similarity)],
    ["‖x̂‖ / ‖x‖", "l2_ratio", fmt(m.l2_ratio)],
    ["CE loss clean", "ce_loss_clean", fmt(m.ce_loss_clean)],
    ["CE loss with SAE", "ce_loss_with_sae", fmt(m.ce_loss_with_sae)],
    ["CE loss zero-ablated", "ce_loss_zero_ablated", fmt(m.ce_loss_zero_ablated)],
    ["loss recovered", "loss_recovered", fmt(m.loss_recovered)],
    ["KL with SAE", "kl_with_sae", fmt(m.kl_with_sae)],
    ["dead features", "dead_features", `${m.dead_features} (${fmt(100 * m.dead_fraction, 1)}%)`],
    ["dense features", "dense_features", `${m.dense_features} (${fmt(100 * m.dense_fraction, 1)}%)`],
  ];
  return el("div", { "data-testid": "sae-eval-result" },
    r.warning ? el("p", { class: "warning", role: "status", "data-testid": "sae-eval-warning" }, `warning: ${r.warning}`) : null,
    el("p", {}, `${m.architecture} dictionary at ${m.hook}${m.output_hook !== m.hook ? ` → ${m.output_hook}` : ""}: ${m.d_sae.toLocaleString()} features, ` +
      `${m.contexts} contexts × ${m.context_size} tokens${r.report ? ` · report ${r.report}` : ""}`),
    el("table", { class: "numbers" }, ...rows.map(([label, key, value]) =>
      el("tr", { "data-metric": key }, el("th", {}, label), el("td", { class: "num" }, value)))));
}

/** The form, its job runner and the result table, inside a collapsed "Evaluate the SAE" section. */
export function saeEvalForm(holder: HTMLElement): void {
  fetch("/api/jobs/kinds").then(r => r.json() as Promise<JobKinds & { sae_eval: { available: boolean; reason: string | null } }>).then(kinds => {
    if (!kinds.sae_eval?.available) return; // without --sae the Features page's build form already says what is missing
    const source = el("select", { "aria-label": "evaluation text source", "data-testid": "eval-source" },
      el("option", { value: "" }, "texts typed below (paragraphs separated by a blank line)"),
      ...kinds.texts.map(t => el("option", { value: t.id }, `served file · ${t.name} (${(t.bytes / 1024).toFixed(1)} KiB)`)));
    const texts = el("textarea", { "aria-label": "evaluation texts", "data-testid": "eval-texts", placeholder: "One document per paragraph…" });
    const contexts = el("input", { type: "number", min: "1", max: "4096", value: "64", "aria-label": "evaluation contexts at most", "data-testid": "eval-contexts", class: "short" });
    const size = el("input", { type: "number", min: "2", max: "1024", value: "128", "aria-label": "evaluation tokens per context", "data-testid": "eval-context-size", class: "short" });
    const run = el("button", { type: "submit", "data-testid": "eval-run" }, "Evaluate");
    const result = el("div", {});
    const runner = new JobRunner<SaeEvalJobResult>(r => result.replaceChildren(table(r)), () => { run.disabled = false; });
    const syncSource = () => { texts.hidden = source.value !== ""; };
    source.addEventListener("change", syncSource);
    if (kinds.texts.length > 0) source.value = kinds.texts[0].id;
    syncSource();
    const form = el("form", { class: "job-form panel", "data-testid": "eval-form" }, el("label", {}, "from ", source), texts,
      el("label", {}, "contexts ≤ ", contexts), el("label", {}, "tokens each ", size), run);
    form.addEventListener("submit", e => {
      e.preventDefault();
      run.disabled = true;
      result.replaceChildren();
      const body: Record<string, unknown> = { max_contexts: Number(contexts.value) || 64, context_size: Number(size.value) || 128 };
      if (source.value) body.artifact = source.value;
      else body.texts = texts.value.split(/\n\s*\n/).filter(t => t.trim().length > 0);
      runner.start("sae-eval", body).catch(() => { run.disabled = false; });
    });
    holder.replaceChildren(el("details", { class: "job", "data-testid": "eval-details" },
      el("summary", {}, "Evaluate the SAE"),
      el("p", { class: "muted" }, "Splices the --sae dictionary into the model over the texts, as `loupe sae eval`: L0, variance explained, cross-entropy clean / with the SAE / zero-ablated and the loss recovered, KL, dead and dense features. With --graphs the report is written to evals/NAME/eval.json."),
      form, runner.element, result));
  }, () => undefined);
}
