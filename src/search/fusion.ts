/** One ranked list of a hybrid search: ids best first, with the score each signal gave them (0 to 1). */
export interface RankedList {
  readonly ids: readonly string[];
  readonly scores: ReadonlyMap<string, number>;
}

/** A fused hit: its reciprocal-rank-fusion score scaled to 0..1, and each signal's own score (0 when it did not find it). */
export interface FusedHit {
  readonly id: string;
  readonly similarity: number;
  readonly signals: readonly number[];
}

/** The usual RRF constant (Cormack et al.): dampens the weight of the very first ranks. */
export const RRF_K = 60;

/**
 * Reciprocal rank fusion of several rankings: score(d) = Σ 1 / (k + rank(d)),
 * scaled by its maximum (first in every list) so that similarity is 0 to 1.
 * Ties keep the order of the first list that ranked them.
 */
export function fuseRankings(lists: readonly RankedList[], k = RRF_K): FusedHit[] {
  const live = lists.filter((l) => l.ids.length > 0);
  const max = live.length / (k + 1);
  const fused = new Map<string, { score: number; first: number }>();
  let order = 0;
  for (const list of live) {
    list.ids.forEach((id, i) => {
      const entry = fused.get(id) ?? { score: 0, first: order++ };
      entry.score += 1 / (k + i + 1);
      fused.set(id, entry);
    });
  }
  return [...fused.entries()]
    .sort((a, b) => b[1].score - a[1].score || a[1].first - b[1].first)
    .map(([id, { score }]) => ({
      id,
      similarity: max > 0 ? Math.min(1, score / max) : 0,
      signals: lists.map((l) => l.scores.get(id) ?? 0),
    }));
}
