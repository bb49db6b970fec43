// A small DOM builder: the app needs no framework, and nothing here writes HTML strings (no injection).
type Child = Node | string | null | undefined | false;
type Props = Record<string, string | number | boolean | EventListener | undefined>;

export function el<K extends keyof HTMLElementTagNameMap>(tag: K, props: Props = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") node.addEventListener(key.slice(2).toLowerCase(), value);
    else if (key === "class") node.className = String(value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}

/** Shows a token's text with whitespace made visible. */
export function show(text: string): string {
  if (text === "") return "∅";
  return text.replace(/ /g, "·").replace(/\n/g, "↵").replace(/\t/g, "⇥");
}

export function pct(p: number): string {
  return p >= 0.001 ? `${(p * 100).toFixed(1)}%` : p.toExponential(1);
}

/** A canvas sized for the screen's pixel ratio; draw in CSS pixels. */
export function canvas(width: number, height: number, label: string): [HTMLCanvasElement, CanvasRenderingContext2D] {
  const c = el("canvas", { role: "img", "aria-label": label });
  const ratio = window.devicePixelRatio || 1;
  c.width = Math.round(width * ratio);
  c.height = Math.round(height * ratio);
  c.style.width = `${width}px`;
  c.style.height = `${height}px`;
  const ctx = c.getContext("2d")!;
  ctx.scale(ratio, ratio);
  return [c, ctx];
}

/** White → deep blue for a value in [0, 1]. */
export function blue(v: number): string {
  const t = Math.max(0, Math.min(1, v));
  const r = Math.round(255 - t * (255 - 30)), g = Math.round(255 - t * (255 - 80)), b = Math.round(255 - t * (255 - 180));
  return `rgb(${r},${g},${b})`;
}

/** The URL's query parameters, and a way to change them without reloading (shareable state). */
/**
 * For pages that ask the server again and again: each call of the returned function starts a request and gives a `draw`
 * that runs its callback only while that request is still the latest — an earlier answer arriving later is dropped.
 */
export function latestOnly(): () => (draw: () => void) => void {
  let latest = 0;
  return () => {
    const ticket = ++latest;
    return draw => { if (ticket === latest) draw(); };
  };
}

export function query(): URLSearchParams {
  return new URLSearchParams(location.search);
}

export function setQuery(changes: Record<string, string | null>, push = false): void {
  const q = query();
  for (const [k, v] of Object.entries(changes)) if (v === null) q.delete(k); else q.set(k, v);
  const url = `${location.pathname}${q.toString() ? "?" + q.toString() : ""}`;
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
}

/** Keyboard for a table row that opens something: Enter opens it, ↑/↓ move to the row above or below. */
export function rowKeys(tr: HTMLElement, open: () => void): void {
  tr.addEventListener("keydown", e => {
    if (e.key === "Enter") open();
    else if (e.key === "ArrowDown") { e.preventDefault(); (tr.nextElementSibling as HTMLElement | null)?.focus(); }
    else if (e.key === "ArrowUp") { e.preventDefault(); (tr.previousElementSibling as HTMLElement | null)?.focus(); }
  });
}

/** A "‹ prev" (delta −1) or "next ›" (delta +1) button of a paged list; disabled past either end. */
export function pagerButton(offset: number, delta: number, pageSize: number, total: number, label: string, go: (to: number) => void): HTMLButtonElement {
  const to = offset + delta * pageSize;
  const b = el("button", { disabled: to < 0 || to >= total, "data-testid": delta < 0 ? "prev-page" : "next-page" }, label);
  b.addEventListener("click", () => go(to));
  return b;
}
