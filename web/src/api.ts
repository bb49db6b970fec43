// Types of the JSON API (snake_case, as the server writes it) and a fetch helper.
export interface TokenView { id: number; text: string }
export interface NextTokenView { id: number; text: string; prob: number }
export interface ModelView { name: string; family: string; layers: number; heads: number; d_model: number; vocab: number; n_ctx: number; has_tokenizer: boolean; max_prompt_tokens: number; processing: string | null }
export interface LensView { stages: string[]; top_token: number[][]; top_text: string[][]; top_prob: number[][]; final_top_prob: number[][] }
export interface DlaComponent { name: string; kind: string; layer: number; head: number; value: number }
export interface DlaView { token: TokenView; position: number; logit: number; components: DlaComponent[]; norm_bias: number; unembed_bias: number }
export interface PromptResponse { tokens: TokenView[]; top_k: NextTokenView[][]; lens: LensView; dla: DlaView; tuned_lens: LensView | null }
export interface DetectionView { kinds: string[]; scores: number[][][]; sequences: number; repeat_length: number }
export interface AttentionResponse { tokens: TokenView[]; layers: number; heads: number; patterns: number[][][][]; detection: DetectionView }

export class ApiError extends Error {}

export async function api<T>(path: string, body?: unknown): Promise<T> {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const json = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new ApiError(json.error ?? `HTTP ${response.status}`);
  return json as T;
}

/** A prompt as the API takes it: text, or ids when the model has no tokenizer (or the text is "ids:1,2,3"). */
export function promptBody(text: string, model: ModelView | null): { text?: string; tokens?: number[] } {
  const ids = text.match(/^\s*ids:\s*([\d,\s]+)$/);
  if (ids || (model && !model.has_tokenizer)) {
    const list = (ids ? ids[1] : text).split(/[,\s]+/).filter(s => s.length > 0).map(Number);
    return { tokens: list };
  }
  return { text };
}

// Features and Steering pages.
export interface FeatureStoreView { id: string; name: string; hook: string; d_sae: number; n_tokens: number; dead: number; has_sae: boolean; sae: string }
export interface FeatureRowView { feature: number; n_active: number; density: number; max_act: number; mean_act: number | null; top_promoted: string | null; explanation: string | null }
export interface FeatureListView { total: number; offset: number; order: string; rows: FeatureRowView[] }
export interface ExampleView { rank: number; activation: number; context_id: number; position: number; window_start: number; tokens: number[]; token_strs: (string | null)[]; acts: number[] }
export interface HistogramView { bin_edges: number[]; counts: number[] }
export interface LogitView { token_id: number; token_str: string | null; value: number }
export interface ExplanationView { explainer_model: string; text: string; scores: Record<string, Record<string, number>> }
export interface FeatureDashboard {
  feature: number; d_sae: number; hook: string; n_tokens: number; explanations: ExplanationView[];
  n_active: number; density: number; max_act: number; mean_act: number | null; decoder_norm: number;
  acts_histogram: HistogramView | null; logits_histogram: HistogramView | null; promoted: LogitView[]; suppressed: LogitView[];
  top: ExampleView[]; quantiles: { bin: number; lower: number; upper: number; n_active: number; examples: ExampleView[] }[];
}
export interface TextSearchView { tokens: TokenView[]; features: { feature: number; activation: number }[][] }
export interface TokenSearchView { tokens: TokenView[]; features: { feature: number; examples: number; max_activation: number }[] }
export interface VectorView { id: string; name: string; hook: string | null; norm: number; width: number }
export interface SteeringSourcesView { vectors: VectorView[]; stores: FeatureStoreView[]; hooks: string[] }
